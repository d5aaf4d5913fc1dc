"""GET /v1/account: the caller's plan, limits, remaining quota, balance and usage today.

Free to call: it reads the limits without consuming them.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from gateway.accounts import effective_limits
from gateway.api.common import app_state, authenticate, json_response
from gateway.billing import micros_to_usd
from gateway.errors import AuthenticationError
from gateway.metering import utc_day


async def get_account(request: Request) -> Response:
    state = app_state(request)
    auth = await authenticate(request)
    # Usage first, then the balance: a request already counted in the usage is then always
    # settled in the balance shown too (settlements land between the two reads, never the
    # other way round).
    today = utc_day(time.time())
    rows = await state.store.usage(auth.account_id, today, today)
    account = await state.store.get_account(auth.account_id)  # fresh: the balance moves
    if account is None:
        raise AuthenticationError("The account of this API key no longer exists.")
    admission = await state.meter.peek(account)
    return json_response(
        {
            "id": account.id,
            "name": account.name,
            "plan": account.plan,
            "limits": effective_limits(state.settings, account),
            "remaining": {
                "requests_minute": admission.remaining_requests,
                "requests_day": admission.remaining_requests_day,
            },
            "credits_usd": micros_to_usd(account.credits_micros),
            "usage_today": {
                "requests": sum(r.requests for r in rows),
                "prompt_tokens": sum(r.prompt_tokens for r in rows),
                "completion_tokens": sum(r.completion_tokens for r in rows),
                "images": sum(r.images for r in rows),
                "cost_usd": micros_to_usd(sum(r.cost_micros for r in rows)),
            },
        },
        headers=admission.headers(),
    )
