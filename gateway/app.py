"""create_app(settings) -> the ASGI app: routes, error handlers, middleware and lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import drain, web
from gateway.api import (
    account,
    admin,
    chat,
    embeddings,
    images,
    messages,
    models,
    ops,
    responses,
    status,
    webhooks,
)
from gateway.api.middleware import BodyDeadlines, GatewayMiddleware, envelope_error
from gateway.collector import bound_young
from gateway.errors import (
    INTERNAL_ERROR_MESSAGE,
    GatewayError,
    InternalError,
    InvalidRequest,
    NotFound,
)
from gateway.listener import when_listening
from gateway.metrics import Metrics, worker_exited
from gateway.observer import RequestObserver
from gateway.providers.base import ObservedProvider
from gateway.providers.registry import IN_PROCESS_KINDS
from gateway.requestlog import CLOSE_WAIT_S, RequestLog
from gateway.settings import Settings, config_path, deadline_outlasted, load_settings
from gateway.shutdown_log import ShutdownLog
from gateway.state import AppState, build_state
from gateway.store.base import StoreError
from gateway.store_metrics import store_backend
from gateway.threads import ended_within
from gateway.tracing import build_tracing
from gateway.webhooks.dispatcher import Dispatcher

if TYPE_CHECKING:
    from gateway.tracing import Tracing

log = logging.getLogger("klawd")


def error_response(error: GatewayError) -> Response:
    return Response(error.body(), error.status, error.headers(), media_type="application/json")


async def _gateway_error(request: Request, exc: Exception) -> Response:
    return error_response(envelope_error(exc) or InternalError(INTERNAL_ERROR_MESSAGE))


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 400
    detail = exc.detail if isinstance(exc, HTTPException) else "Bad request."
    if status == 404:
        return error_response(NotFound(f"No route for {request.method} {request.url.path}."))
    if status == 405:
        response = error_response(
            InvalidRequest(f"Method {request.method} is not allowed on {request.url.path}.")
        )
        response.status_code = 405
        return response
    return error_response(InvalidRequest(str(detail)))


class AsgiEndpoint:
    """Marks a plain ASGI function as such for Starlette's Route (which would otherwise wrap a
    function as a request -> response handler)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


CHAT_ROUTE = Route("/v1/chat/completions", AsgiEndpoint(chat.chat_completions), methods=["POST"])
# The coding agents' routes (Claude Code's, Codex's and the Agents SDK's), served as the chat
# route is (decision 0012, issue 19zy).
MESSAGES_ROUTE = Route("/v1/messages", AsgiEndpoint(messages.create_message), methods=["POST"])
RESPONSES_ROUTE = Route("/v1/responses", AsgiEndpoint(responses.create_response), methods=["POST"])
DIRECT_ROUTES = [CHAT_ROUTE, MESSAGES_ROUTE, RESPONSES_ROUTE]


def routes() -> list[BaseRoute]:
    return [
        CHAT_ROUTE,
        MESSAGES_ROUTE,
        Route("/v1/messages/count_tokens", messages.count_message_tokens, methods=["POST"]),
        Route("/v1/embeddings", embeddings.create_embeddings, methods=["POST"]),
        RESPONSES_ROUTE,
        Route("/v1/responses/{response_id}", responses.get_response, methods=["GET"]),
        Route("/v1/responses/{response_id}", responses.delete_response, methods=["DELETE"]),
        Route(
            "/v1/responses/{response_id}/input_items",
            responses.list_input_items,
            methods=["GET"],
        ),
        Route("/api/images/generations", images.image_generations, methods=["POST"]),
        Route("/v1/images/generations", images.image_generations, methods=["POST"]),
        Route("/v1/models", models.list_models, methods=["GET"]),
        Route("/v1/account", account.get_account, methods=["GET"]),
        Route("/v1/models/{model_id:path}", models.get_model, methods=["GET"]),
        Route("/admin/accounts", admin.create_account, methods=["POST"]),
        Route("/admin/accounts/{account_id}", admin.get_account, methods=["GET"]),
        Route("/admin/accounts/{account_id}", admin.patch_account, methods=["PATCH"]),
        Route("/admin/accounts/{account_id}/keys", admin.create_key, methods=["POST"]),
        Route("/admin/accounts/{account_id}/keys", admin.list_keys, methods=["GET"]),
        Route("/admin/accounts/{account_id}/usage", admin.account_usage, methods=["GET"]),
        Route("/admin/keys/{key_id}", admin.revoke_key, methods=["DELETE"]),
        Route("/admin/keys/{key_id}", admin.get_key, methods=["GET"]),
        Route("/admin/keys/{key_id}", admin.patch_key, methods=["PATCH"]),
        *webhook_routes(),
        Route("/healthz", ops.healthz, methods=["GET"]),
        Route("/readyz", ops.readyz, methods=["GET"]),
        Route("/metrics", ops.metrics, methods=["GET"]),
        Route("/status", status.status, methods=["GET"]),
        *web.routes(),  # Mission Control, under /mission-control
    ]


def webhook_routes() -> list[Route]:
    account = "/admin/accounts/{account_id}"
    return [
        Route(f"{account}/webhook", webhooks.put_webhook, methods=["PUT"]),
        Route(f"{account}/webhook", webhooks.get_webhook, methods=["GET"]),
        Route(f"{account}/webhook", webhooks.delete_webhook, methods=["DELETE"]),
        Route(f"{account}/webhook/rotate", webhooks.rotate_secret, methods=["POST"]),
        Route(f"{account}/webhook/test", webhooks.send_test_event, methods=["POST"]),
        Route(f"{account}/webhook/deliveries", webhooks.list_deliveries, methods=["GET"]),
        Route(f"{account}/invoices", webhooks.create_invoice, methods=["POST"]),
        Route(f"{account}/invoices", webhooks.list_invoices, methods=["GET"]),
        Route("/admin/invoices/{invoice_id}/paid", webhooks.pay_invoice, methods=["POST"]),
    ]


def build_observer(settings: Settings) -> RequestObserver:
    """Collectors over the configured (bounded) label values, and the request log."""
    metrics = Metrics(
        models=[m.id for m in settings.models],
        providers=settings.providers,
        plans=settings.plans,
        store_backend=store_backend(settings.store.url),
    )
    return RequestObserver(metrics, RequestLog())


def attach_observer(
    state: AppState, observer: RequestObserver, tracing: Tracing | None = None
) -> None:
    state.meter.observer = observer
    state.retrier.observer = observer
    state.retrier.tracing = tracing
    state.cache.observer = observer
    for provider in state.providers.values():
        if isinstance(provider, ObservedProvider):
            provider.observer = observer
            provider.tracing = tracing


async def _report_metrics(state: AppState, observer: RequestObserver) -> None:
    """Every second: the buffered counters and histograms into the collectors, and the circuit
    gauge of each provider (the worst circuit among its deployments)."""
    while True:
        observer.metrics.buffer.flush()
        observer.circuits(
            (entry.model.provider, view.state)
            for view in state.health.view()
            if (entry := state.catalog.deployments.get(view.model)) is not None
        )
        await asyncio.sleep(METRICS_REPORT_INTERVAL_S)


async def _close_log_and_exporter(
    request_log: RequestLog, tracing: Tracing | None, end: float, kill_at: float | None
) -> None:
    """The request log's writer and the span exporter stopped within what is left of the
    shutdown's budget (`end`, loop time), or, when the kill is known to come later (`kill_at`,
    wall time: `klawd serve` signalled with no stream left open), until shortly before it;
    each close has its own bound besides (the writer's CLOSE_WAIT_S, the exporter child's
    CHILD_EXIT_TIMEOUT_S). Cut, each goes on in its daemon thread while the process lives:
    what it has not written by the exit is lost (as at the kill that would come instead),
    and one line says how much."""
    within_s = min(_left(end, kill_at), max(_left(end, None), CLOSE_WAIT_S))
    if not await request_log.aclose(within_s):
        log.error(
            "shutdown: the request log not closed after %.2f s: %d request line(s) not written "
            "yet, left to its writer until the process exits",
            within_s,
            request_log.unwritten,
        )
    if tracing is None:
        return
    within_s = _left(end, kill_at)
    if not await ended_within(tracing.close, within_s, "klawd-span-close"):
        log.error(
            "shutdown: the span exporter not closed after %.2f s: %d span(s) not written to its "
            "child yet (%d bytes), left to the process's exit (the child sends what it read, "
            "then ends)",
            within_s,
            tracing.pipe.unwritten_spans,
            tracing.pipe.unwritten_bytes,
        )


def _left(end: float, kill_at: float | None) -> float:
    """What is left of the shutdown's budget (`end`, loop time), or until shortly before the
    kill when it is known to come later (`kill_at`, wall time)."""
    left = end - asyncio.get_running_loop().time()
    if kill_at is not None:
        left = max(left, kill_at - KILL_MARGIN_S - time.time())
    return max(0.0, left)


# What the lifespan leaves for Granian's own stop of the worker before its kill.
KILL_MARGIN_S = 0.25
METRICS_REPORT_INTERVAL_S = 1.0
# The cycle collector's thresholds in a worker (CPython's: 700, 10, 10). A full collection walks
# every tracked object, about a hundred per open stream: with 10,000 streams open it pauses them
# all for a quarter of a second or more, and at CPython's thresholds a ramp of new streams runs
# one each time the heap grows by a quarter (docs/decisions/0012, fourth pass). A stream, however
# it ends, is freed by reference counting (tests/integration/test_streams_freed.py), so rarer
# collections do not hold its memory: young collections every 2,000 net allocations, a full one
# at most every 500 of the middle generation's (2 million net allocations). A middle collection
# every 2 young ones, not CPython's 10: it walks what the young ones since kept (each wave of new
# streams keeps nearly all), so ~6,000 objects, a few ms, instead of ~22,000 and 10-25 ms in a
# burst's tail; the same objects are walked as often (decision 0012, twenty-sixth pass).
GC_THRESHOLDS = (2000, 2, 500)


class _Collector:
    """The collector's freeze and thresholds are the process's, not an app's: with several
    apps in one process (tests, an embedding program), each start freezes what it built, and
    the last app to stop undoes it all and restores the thresholds the first one found. One
    per process, as what it guards; a lock, as apps may start in threads of their own
    (Starlette's TestClient)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._apps = 0
        self._found = gc.get_threshold()

    def started(self) -> None:
        with self._lock:
            if self._apps == 0:
                self._found = gc.get_threshold()
            self._apps += 1
            gc.collect()
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)

    def stopped(self) -> None:
        with self._lock:
            self._apps -= 1
            if self._apps == 0:
                gc.unfreeze()
                gc.set_threshold(*self._found)


_COLLECTOR = _Collector()


def create_app(settings: Settings, environ: Mapping[str, str] | None = None) -> ASGIApp:
    env = dict(os.environ if environ is None else environ)
    outlasted = {
        name: bound
        for name, bound in deadline_outlasted(settings).items()
        if settings.providers[name].kind not in IN_PROCESS_KINDS
    }
    if outlasted:
        log.warning(
            "[retry] deadline_s = %g s cuts these providers' calls before their own bound on an "
            "answer's headers: %s; a deadline's cut never counts against a circuit, so a hung "
            "deployment of theirs is never taken out of rotation: set their "
            "first_byte_timeout_s (and answer_timeout_s) below it",
            settings.retry.deadline_s,
            ", ".join(f"{name} ({bound:g} s)" for name, bound in sorted(outlasted.items())),
        )
    observer = build_observer(settings)
    tracing = build_tracing(settings.telemetry)
    body_deadlines = BodyDeadlines(settings.server.body_idle_timeout_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
        observer.request_log.start()
        state = await build_state(settings, env, observer.metrics)
        attach_observer(state, observer, tracing)
        state.dispatcher = Dispatcher(state.store, settings.webhooks, observer.metrics)
        state.dispatcher.start()
        loop = asyncio.get_running_loop()
        circuits = loop.create_task(_report_metrics(state, observer), name="klawd-metrics")
        shutdown_lines: list[ShutdownLog] = []  # begun by the drain, else by the shutdown

        def shutdown_log() -> ShutdownLog:
            if not shutdown_lines:
                shutdown_lines.append(ShutdownLog.begin())
            return shutdown_lines[0]

        draining = loop.create_task(
            drain.watch(
                state.streams, settings.server.streams.drain_grace_s, on_drain=shutdown_log
            ),
            name="klawd-drain",
        )
        sweeping = loop.create_task(body_deadlines.sweep(), name="klawd-body-deadlines")
        # After a stream's own send deadline (which comes by send_timeout_s + keepalive_s, and
        # counts it), so that the kernel only ends what the app cannot: an answer left unread.
        streams = settings.server.streams
        unread_s = streams.send_timeout_s + streams.keepalive_s + 1
        listening = loop.create_task(when_listening(unread_s), name="klawd-listener")
        # What start-up built lives as long as the worker: out of the collector's sight, so that
        # full collections under load only walk what requests allocate.
        _COLLECTOR.started()
        collecting = loop.create_task(bound_young(GC_THRESHOLDS), name="klawd-collector")
        try:
            yield {"klawd": state, "klawd_observer": observer}
        finally:
            circuits.cancel()
            collecting.cancel()
            draining.cancel()
            sweeping.cancel()
            listening.cancel()
            lines = shutdown_log()  # (a log stream that takes nothing holds no step)
            budget = drain.shutdown_budget_s(settings.server.streams.drain_grace_s)
            end = loop.time() + budget
            kill_at = None
            keep = budget / 16  # the last lines' share (lines.end), from the two closes'
            try:
                end = await state.close()
                # What an operator reads after the shutdown, before the two closes that wait on
                # what the worker does not control (a log stream, the exporter's child): a kill
                # during those must not lose it.
                observer.metrics.buffer.flush()
                worker_exited(os.getpid())
                kill_at = drain.kill_expected_at(settings.server.streams.drain_grace_s)
                await _close_log_and_exporter(
                    observer.request_log,
                    tracing,
                    end - keep,
                    None if kill_at is None else kill_at - keep,
                )
            finally:
                await lines.end(_left(end, kill_at))
                # Undone for a process that outlives the app (tests, an embedding program),
                # even by a shutdown that failed: frozen, the app's objects are never
                # collected (so nothing can undo it once they are unreachable: decision 0013,
                # 19zzn), and hidden from gc.get_referrers, which Hypothesis's register_random
                # reads to warn of a Random nobody holds.
                _COLLECTOR.stopped()
            if state.streams.orphaned:
                drain.remove_leftovers(os.getpid())

    starlette = Starlette(
        routes=routes(),
        lifespan=lifespan,
        exception_handlers={
            GatewayError: _gateway_error,
            StoreError: _gateway_error,
            HTTPException: _http_error,
        },
    )
    return GatewayMiddleware(
        starlette,
        settings.server.max_body_bytes,
        observer,
        DIRECT_ROUTES,
        settings.server.log_bodies_bytes,
        tracing,
        body_deadlines,
    )


def app_from_environment() -> ASGIApp:
    """Granian's factory target: settings from KLAWD_CONFIG (set by `klawd serve`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return create_app(load_settings(config_path(None, os.environ), os.environ))
