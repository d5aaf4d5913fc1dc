"""The admin API (Bearer $KLAWD_ADMIN_TOKEN): accounts and keys."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway import accounts
from gateway.api.common import app_state, decode_body, json_response, require_admin


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
    return json_response(accounts.account_json(state.settings, account))


async def create_key(request: Request) -> Response:
    require_admin(request)
    state = app_state(request)
    new = decode_body(await request.body(), accounts.NewKey)
    key, plaintext = await accounts.create_key(state.store, request.path_params["account_id"], new)
    return json_response(accounts.key_json(key, plaintext), status=201)


async def revoke_key(request: Request) -> Response:
    require_admin(request)
    state = app_state(request)
    key = await accounts.revoke_key(state.store, request.path_params["key_id"])
    state.keys.invalidate(key.id)
    return Response(status_code=204)
