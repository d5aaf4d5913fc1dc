"""Operational endpoints, no key: /healthz (alive), /readyz (store reachable and the usage
ledger's writes not failing for LEDGER_FAILING_S; while draining after SIGTERM Granian has
closed the listener, so readiness fails by refusing connections) and
/metrics (Prometheus text format, every worker's values; 404 here when `server.metrics_port`
serves it on a separate port)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.common import app_state, json_response
from gateway.errors import NotFound
from gateway.metrics import CONTENT_TYPE
from gateway.observer import RequestObserver
from gateway.store.base import StoreError

# How long the ledger's writes may fail before the worker says it is not ready (a blip, one or
# two retries, is not a reason to be taken out of rotation).
LEDGER_FAILING_S = 5.0


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    state = app_state(request)
    try:
        await state.store.ping()
    except StoreError:
        return json_response({"status": "store unreachable"}, status=503)
    # The store answers but refuses the ledger's writes (SQLite's disk full, Redis at its
    # maxmemory): requests are served unbilled until their reservations use up the credit.
    failing_since = state.recorder.failing_since
    now = asyncio.get_running_loop().time()
    if failing_since is not None and now - failing_since >= LEDGER_FAILING_S:
        return json_response({"status": "usage ledger writes failing"}, status=503)
    return json_response({"status": "ready"})


async def metrics(request: Request) -> Response:
    if app_state(request).settings.server.metrics_port is not None:
        raise NotFound("Metrics are served on the separate metrics port.")
    observer: RequestObserver = request.state.klawd_observer
    return Response(observer.metrics.exposition(), media_type=CONTENT_TYPE)
