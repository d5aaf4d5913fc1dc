"""The outermost pure-ASGI layer: request id, body-size limit, and the last-resort 500.

It wraps the whole Starlette app, so that even an unexpected exception becomes the JSON envelope
(with no internal text) and every response carries `x-request-id`. The hottest route (chat
completions) is a plain ASGI endpoint that it calls directly, past Starlette's layers
(docs/decisions/0011-hot-path.md); `envelope_error` maps what such a route raises.

It also opens the request's `RequestRecord` and, when the response has ended (a stream: when the
stream has ended), reports route template, status, duration and time to first byte to the
observer, which writes the request's JSON log line.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING

import orjson
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import ids
from gateway.api.common import send_json_bytes
from gateway.errors import (
    INTERNAL_ERROR_MESSAGE,
    GatewayError,
    InternalError,
    RequestTimeout,
    RequestTooLarge,
    as_gateway_error,
)
from gateway.messages import error_body as anthropic_error_body
from gateway.observer import RequestObserver
from gateway.requestlog import BodyCapture, RequestRecord, current_request
from gateway.store.base import StoreError

if TYPE_CHECKING:
    from gateway.tracing import Tracing

log = logging.getLogger("klawd")

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def new_request_id() -> str:
    return ids.new_id("req_", 12)


UNMATCHED_ROUTE = "unmatched"
# Routes whose bodies `server.log_bodies_bytes` may log: the API's, never the admin API's or
# Mission Control's (their answers hold API keys, webhook secrets, session cookies).
BODY_LOGGED_PREFIXES = ("/v1/", "/api/")


def route_template(scope: Scope) -> str:
    """The path template of the route Starlette matched (bounded), never the raw path. Inside a
    Mount (static prefixes only, e.g. /mission-control) the prefix is in `root_path`."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED_ROUTE
    root: str = scope.get("root_path", "")
    return (root or path) if isinstance(route, Mount) else root + path


def envelope_error(exc: Exception) -> GatewayError | None:
    """The one mapping of an exception to the error envelope (Starlette's exception handlers use
    it too); None for an unexpected exception, which is a 500 with no internal text."""
    if isinstance(exc, StoreError):
        log.error("store error: %s", exc)
    return as_gateway_error(exc)


class GatewayMiddleware:
    """`direct_routes`: plain-ASGI routes with a fixed path, served without passing through
    Starlette's router and exception middleware (the hot path); any other method or path goes
    to the Starlette app, whose router knows the same routes (405s, the route template)."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        observer: RequestObserver | None = None,
        direct_routes: Sequence[Route] = (),
        log_bodies_bytes: int = 0,
        tracing: Tracing | None = None,
        body_deadlines: BodyDeadlines | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.observer = observer
        self.direct_routes = {route.path: route for route in direct_routes}
        # The ASGI callable each direct route wraps (calling AsgiEndpoint would be one more
        # coroutine per request).
        self.direct_apps: dict[str, ASGIApp] = {
            route.path: getattr(route.app, "app", route.app) for route in direct_routes
        }
        self.log_bodies_bytes = log_bodies_bytes
        self.tracing = tracing  # traces on: the request's server span opens and ends here
        self.body_deadlines = body_deadlines

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        declared_length = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _CLIENT_REQUEST_ID.match(candidate):
                    request_id = candidate
            elif name == b"content-length":
                try:
                    declared_length = int(value)
                except ValueError:
                    declared_length = None
            elif name == b"transfer-encoding":
                chunked = True  # the body's length is the chunks', not a Content-Length's
        request_id = request_id or ids.new_id("req_", 12)  # new_request_id(), inline
        scope.setdefault("state", {})["request_id"] = request_id
        # One coroutine for the whole request (a `_serve` awaited from here was one more frame
        # on every step of every request).
        observer = self.observer
        record = token = None
        arrived = 0.0
        tracing = self.tracing
        if observer is not None:
            arrived = time.perf_counter()
            record = RequestRecord(request_id, scope["method"])
            if self.log_bodies_bytes and scope["path"].startswith(BODY_LOGGED_PREFIXES):
                record.bodies = BodyCapture(self.log_bodies_bytes)
            token = current_request.set(record)
            if tracing is not None:
                tracing.start_request(record, scope["path"], scope["headers"])
        try:
            send_with_id = SendWithId(
                send, (b"x-request-id", request_id.encode()), scope, record, observer
            )
            if declared_length is not None and declared_length > self.max_body_bytes:
                too_large = body_too_large(self.max_body_bytes)
                await send_json_bytes(send_with_id, too_large.status, _body(scope, too_large), {})
                return
            bodies = record.bodies if record is not None else None
            limited_receive = LimitedReceive(
                receive,
                self.max_body_bytes,
                bodies,
                None if chunked else declared_length,
                self.body_deadlines,
            )
            app = self.app
            route = self.direct_routes.get(scope["path"])
            if route is not None and route.methods is not None and scope["method"] in route.methods:
                scope["route"] = route
                app = self.direct_apps[route.path]
                if record is not None:  # route_template's answer for a direct route, known here
                    record.route = scope.get("root_path", "") + route.path
            try:
                await app(scope, limited_receive, send_with_id)
            except Exception as exc:
                error = envelope_error(exc)
                if error is not None and not send_with_id.started:
                    await send_json_bytes(
                        send_with_id, error.status, _body(scope, error), error.headers()
                    )
                    return
                log.exception(
                    "unhandled error on %s %s (request %s)",
                    scope["method"],
                    scope["path"],
                    request_id,
                )
                if not send_with_id.started:
                    error = InternalError(INTERNAL_ERROR_MESSAGE)
                    await send_json_bytes(send_with_id, error.status, _body(scope, error), {})
        finally:
            if observer is not None and record is not None:
                current_request.reset(token)  # type: ignore[arg-type]
                if not record.route:  # a direct route's is set when it was matched
                    record.route = route_template(scope)
                if record.stream_open:
                    observer.stream_closed(record.route)
                if tracing is not None:
                    tracing.end_request(record)
                observer.http_finished(record, arrived, time.perf_counter())


class SendWithId:
    """The app's `send`: adds the request id header to the answer and notes its status and
    first byte for the log line. Not a coroutine: the server's own awaitable is returned (one
    coroutine frame less per message, three per stream). An object with slots rather than a
    closure (a cell per variable): a stream holds it for its life, and every object a stream
    holds is walked by each full collection."""

    __slots__ = ("id_header", "observer", "record", "scope", "send", "started")

    def __init__(
        self,
        send: Send,
        id_header: tuple[bytes, bytes],
        scope: Scope,
        record: RequestRecord | None,
        observer: RequestObserver | None,
    ) -> None:
        self.send = send
        self.id_header = id_header
        self.scope = scope
        self.record = record
        self.observer = observer
        self.started = False

    def __call__(self, message: Message) -> Awaitable[None]:
        record = self.record
        if message["type"] == "http.response.start":
            self.started = True
            headers = [*message.get("headers", []), self.id_header]
            message["headers"] = headers
            observer = self.observer
            if record is not None and observer is not None:
                record.status = message["status"]
                if _is_event_stream(headers):
                    record.stream_open = True
                    if not record.route:  # a direct route's is known already
                        record.route = route_template(self.scope)
                    observer.stream_opened(record.route)
        elif record is not None:
            if record.first_byte_at is None and (
                message.get("body") or not message.get("more_body", False)
            ):
                record.first_byte_at = time.perf_counter()
            if record.bodies is not None:
                record.bodies.response.add(message.get("body", b""))
        return self.send(message)

    def passthrough(self) -> Send:
        """The server's own `send` once nothing is left to note per message (the answer
        started, its first byte noted, no body captured), else this wrapper: a stream that
        asks after its first piece sends the rest without a Python frame per piece."""
        record = self.record
        if self.started and (
            record is None or (record.first_byte_at is not None and record.bodies is None)
        ):
            return self.send
        return self


class BodyDeadlines:
    """The requests reading their body right now, each with the sweep tick its last piece came
    at (or its read began), and one sweep a second that ends those silent for `idle_s`: the
    server's pending `receive()` is cancelled, which their read turns into a 408. A dict entry
    per read rather than a timer per request, and a tick rather than a clock read: no Python
    frame and no clock on a request's path (the deadline fires up to a sweep late)."""

    __slots__ = ("idle_s", "reading", "tick")

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self.reading: dict[LimitedReceive, int] = {}
        self.tick = 0  # sweeps so far

    async def sweep(self, every_s: float = 1.0) -> None:
        """For the worker's lifetime (started by the app's lifespan)."""
        every_s = min(every_s, self.idle_s / 2)
        idle_ticks = math.ceil(self.idle_s / every_s)
        while True:
            await asyncio.sleep(every_s)
            self.tick += 1
            self.expire(idle_ticks)

    def expire(self, idle_ticks: int) -> None:
        reading, tick = self.reading, self.tick
        for receiver, since in list(reading.items()):
            waiting = receiver.waiting
            done = getattr(waiting, "done", None)
            if done is None or done():
                del reading[receiver]  # not a future; or read, and the request went on
            elif tick - since >= idle_ticks:
                del reading[receiver]
                receiver.expired = True
                waiting.cancel()


class LimitedReceive:
    """`receive` with the body-size limit, the body's idle deadline (`BodyDeadlines`) and the
    body capture. Once the body is whole, the
    server's own `receive()` is handed out as it is: Granian's is a future that takes a done
    callback, so a stream learns of the client's disconnect without a task of its own
    (gateway/api/streaming.py).

    `declared`: the request's Content-Length (None when it has none, or is chunked). The message
    that brings the body to that length is handed on as the body's last (`more_body` false).
    Granian sends every piece with `more_body` true and then an empty last message, and each
    `receive()` is a round trip through its runtime (its thread takes the GIL to build the
    message, then wakes the event loop): ~30-40 us on the request's path, before the upstream
    call. That empty message is left for a later `receive()`: a stream's disconnect watcher,
    which waits again on any message that is not the disconnect (gateway/api/streaming.py)."""

    __slots__ = (
        "_bodies",
        "_deadlines",
        "_declared",
        "_limit",
        "_receive",
        "_received",
        "expired",
        "waiting",
        "whole",
    )

    def __init__(
        self,
        receive: Receive,
        limit: int,
        bodies: BodyCapture | None,
        declared: int | None = None,
        deadlines: BodyDeadlines | None = None,
    ) -> None:
        self._receive = receive
        self._limit = limit
        self._bodies = bodies
        self._declared = declared
        self._deadlines = deadlines
        self._received = 0
        self.whole = False
        self.waiting: asyncio.Future[Message]  # the server's pending receive(), once read
        self.expired = False  # its body went silent for the deadline: the read is a 408

    def __call__(self) -> Awaitable[Message]:
        if self.whole:
            return self._receive()
        return self._limited()

    async def _limited(self) -> Message:
        deadlines = self._deadlines
        waiting = self._receive()
        if deadlines is not None:
            # Granian's receive() is a future (`cancel`, `done`): the sweep can end the wait.
            self.waiting = waiting  # type: ignore[assignment]
            deadlines.reading[self] = deadlines.tick
        try:
            message = await waiting
        except asyncio.CancelledError:
            if deadlines is None or not self.expired:
                raise
            raise RequestTimeout(
                f"The request body stopped arriving for {deadlines.idle_s:g} seconds "
                "(server.body_idle_timeout_s)."
            ) from None
        if message["type"] == "http.request":
            body = message.get("body", b"")
            self._received += len(body)
            if self._received > self._limit:
                # Made when raised, not held: held, the error's traceback (this frame, which
                # holds `self`) would make a reference cycle; and most requests never need it.
                raise body_too_large(self._limit)
            if self._bodies is not None:
                self._bodies.request.add(body)
            more = message.get("more_body", False)
            if more and self._received == self._declared:
                message["more_body"] = more = False  # all the Content-Length said: whole
            self.whole = not more
            if self.whole and deadlines is not None:
                deadlines.reading.pop(self, None)
        elif deadlines is not None:  # the client left: http.disconnect
            deadlines.reading.pop(self, None)
        return message


def body_too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"The request body is larger than the gateway's limit of {limit} bytes.")


def _is_event_stream(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-type":
            return bool(value.startswith(b"text/event-stream"))
    return False


def _body(scope: Scope, error: GatewayError) -> bytes:
    """The envelope in the shape of the API the client speaks: Anthropic's on /v1/messages."""
    if scope["path"].startswith("/v1/messages"):
        return orjson.dumps(anthropic_error_body(error))
    return error.body()
