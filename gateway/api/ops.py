"""Operational endpoints, no key: /healthz (alive), /readyz (store reachable; while draining
after SIGTERM Granian has closed the listener, so readiness fails by refusing connections) and
/metrics (Prometheus text format, every worker's values; 404 here when `server.metrics_port`
serves it on a separate port)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.common import app_state, json_response
from gateway.errors import NotFound
from gateway.metrics import CONTENT_TYPE
from gateway.observer import RequestObserver
from gateway.store.base import StoreError


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    state = app_state(request)
    try:
        await state.store.ping()
    except StoreError:
        return json_response({"status": "store unreachable"}, status=503)
    return json_response({"status": "ready"})


async def metrics(request: Request) -> Response:
    if app_state(request).settings.server.metrics_port is not None:
        raise NotFound("Metrics are served on the separate metrics port.")
    observer: RequestObserver = request.state.klawd_observer
    return Response(observer.metrics.exposition(), media_type=CONTENT_TYPE)
