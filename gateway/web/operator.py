"""The operator's view (signed in with the admin token): accounts, plans, credits, top spenders."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, timedelta

from starlette.requests import Request
from starlette.responses import Response

from gateway import accounts
from gateway.api.common import app_state
from gateway.metering import utc_day
from gateway.store.base import Account
from gateway.web.charts import hbar_chart, money
from gateway.web.context import Web, redirect

MAX_ACCOUNTS = 500  # listed (and summed for top spenders) on one page
SPEND_DAYS = 30
TOP = 10


@dataclass(frozen=True)
class Row:
    account: Account
    limits: dict[str, int | None]
    requests: int
    spent_micros: int


def pages(web: Web) -> dict[str, object]:
    async def operator(request: Request) -> Response:
        session = await web.session(request)
        if session is None or not session.operator:
            return redirect("/operator/login")
        state = app_state(request)
        today = utc_day(time.time())
        since = (date.fromisoformat(today) - timedelta(days=SPEND_DAYS - 1)).isoformat()
        listed = await state.store.list_accounts(MAX_ACCOUNTS)
        rows = []
        for account in listed:
            usage = await state.store.usage(account.id, since, today)
            rows.append(
                Row(
                    account,
                    accounts.effective_limits(state.settings, account),
                    sum(r.requests for r in usage),
                    sum(r.cost_micros for r in usage),
                )
            )
        top = [r for r in sorted(rows, key=lambda r: -r.spent_micros)[:TOP] if r.spent_micros]
        chart = hbar_chart(
            "top-spenders",
            f"Top spenders, last {SPEND_DAYS} days (USD)",
            [(f"{r.account.name} ({r.account.id[-6:]})", r.spent_micros / 1e6) for r in top],
            fmt=money,
        )
        return await web.render(
            request,
            "operator.html",
            {
                "rows": rows,
                "total_accounts": await state.store.count_accounts(),
                "plans": state.settings.plans,
                "top": top,
                "chart": chart,
                "days": SPEND_DAYS,
            },
            session,
        )

    return {"operator": operator}
