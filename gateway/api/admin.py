"""The admin API (Bearer $KLAWD_ADMIN_TOKEN): accounts, keys and their spend."""

from __future__ import annotations

import time
from datetime import date, timedelta

from starlette.requests import Request
from starlette.responses import Response

from gateway import accounts
from gateway.api.common import app_state, decode_body, json_response, require_admin
from gateway.billing import micros_to_usd
from gateway.errors import InvalidRequest
from gateway.keys import KeyAttributes
from gateway.metering import utc_day
from gateway.spend_reports import grouped_usage


async def create_account(request: Request) -> Response:
    require_admin(request)
    state = app_state(request)
    new = decode_body(await request.body(), accounts.NewAccount)
    account = await accounts.create_account(state.store, state.settings, new)
    return json_response(accounts.account_json(state.settings, account), status=201)


async def get_account(request: Request) -> Response:
    require_admin(request)
    state = app_state(request)
    account = await accounts.get_account(state.store, request.path_params["account_id"])
    return json_response(accounts.account_json(state.settings, account))


async def patch_account(request: Request) -> Response:
    require_admin(request)
    state = app_state(request)
    patch = decode_body(await request.body(), accounts.AccountPatch)
    account = await accounts.update_account(
        state.store, state.settings, request.path_params["account_id"], patch
    )
    state.accounts.invalidate(account.id)
    return json_response(accounts.account_json(state.settings, account))


async def create_key(request: Request) -> Response:
    require_admin(request)
    state = app_state(request)
    new = decode_body(await request.body(), accounts.NewKey)
    key, plaintext = await accounts.create_key(state.store, request.path_params["account_id"], new)
    return json_response(accounts.key_json(key, plaintext), status=201)


async def get_key(request: Request) -> Response:
    require_admin(request)
    state = app_state(request)
    key = await accounts.get_key(state.store, request.path_params["key_id"])
    shown = await accounts.keys_with_spend(state.store, key.account_id, [key], utc_day(time.time()))
    return json_response(shown[0])


async def patch_key(request: Request) -> Response:
    require_admin(request)
    state = app_state(request)
    attributes = decode_body(await request.body(), KeyAttributes)
    key = await accounts.update_key(state.store, request.path_params["key_id"], attributes)
    state.keys.invalidate(key.id)
    shown = await accounts.keys_with_spend(state.store, key.account_id, [key], utc_day(time.time()))
    return json_response(shown[0])


async def list_keys(request: Request) -> Response:
    require_admin(request)
    state = app_state(request)
    account = await accounts.get_account(state.store, request.path_params["account_id"])
    keys = await state.store.list_keys(account.id)
    shown = await accounts.keys_with_spend(state.store, account.id, keys, utc_day(time.time()))
    return json_response({"account_id": account.id, "data": shown})


async def revoke_key(request: Request) -> Response:
    require_admin(request)
    state = app_state(request)
    key = await accounts.revoke_key(state.store, request.path_params["key_id"])
    state.keys.invalidate(key.id)
    return Response(status_code=204)


def _day_param(request: Request, name: str, default: str) -> str:
    value = request.query_params.get(name) or default
    try:
        return date.fromisoformat(value[:10]).isoformat()
    except ValueError as exc:
        raise InvalidRequest(f"`{name}` must be a date, YYYY-MM-DD.", param=name) from exc


async def account_usage(request: Request) -> Response:
    """Requests, tokens and cost by model and UTC day; `since` and `until` inclusive. With
    `group_by=key|model|tag:<name>`: totals over the range per key, model or tag value."""
    require_admin(request)
    state = app_state(request)
    account = await accounts.get_account(state.store, request.path_params["account_id"])
    today = utc_day(time.time())
    until = _day_param(request, "until", today)
    since = _day_param(
        request, "since", (date.fromisoformat(until) - timedelta(days=30)).isoformat()
    )
    group_by = request.query_params.get("group_by")
    if group_by is not None:
        grouped = await grouped_usage(state.store, account.id, since, until, group_by)
        return json_response(
            {
                "account_id": account.id,
                "since": since,
                "until": until,
                "group_by": group_by,
                "data": grouped,
            }
        )
    rows = await state.store.usage(account.id, since, until)
    data = [
        {
            "day": r.day,
            "model": r.model,
            "requests": r.requests,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "images": r.images,
            "cost_usd": micros_to_usd(r.cost_micros),
        }
        for r in rows
    ]
    return json_response(
        {
            "account_id": account.id,
            "since": since,
            "until": until,
            "data": data,
            "total": {
                "requests": sum(r.requests for r in rows),
                "prompt_tokens": sum(r.prompt_tokens for r in rows),
                "completion_tokens": sum(r.completion_tokens for r in rows),
                "images": sum(r.images for r in rows),
                "cost_usd": micros_to_usd(sum(r.cost_micros for r in rows)),
            },
        }
    )
