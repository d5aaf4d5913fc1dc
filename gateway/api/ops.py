"""Operational endpoints, no key: /healthz (alive) and /readyz (store reachable, not draining)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.common import app_state, json_response
from gateway.store.base import StoreError


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    state = app_state(request)
    if state.draining:
        return json_response({"status": "draining"}, status=503)
    try:
        await state.store.ping()
    except StoreError:
        return json_response({"status": "store unreachable"}, status=503)
    return json_response({"status": "ready"})
