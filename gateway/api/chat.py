"""POST /v1/chat/completions: auth → decode → route → admit → upstream (fallbacks) → bill."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable

import orjson
from starlette.types import Receive, Scope, Send

from gateway import ids
from gateway.api.common import (
    encode_headers,
    read_body,
    send_json,
    send_json_raw,
    two_headers,
)
from gateway.api.streaming import KEEPALIVE, Deliver, Stepped, send_route_stream
from gateway.api.translated import SteppedStream
from gateway.auth import AuthContext
from gateway.billing import (
    TokenUsage,
    estimate_tokens,
    format_usd,
    micros_to_usd,
    model_cost_micros,
)
from gateway.cache import HEADER as CACHE_HEADER
from gateway.cache import CachedAnswer
from gateway.cache.replay import AssemblingStream, chat_completion, chat_events
from gateway.errors import (
    INTERNAL_ERROR_MESSAGE,
    GatewayError,
    InternalError,
    ShuttingDown,
    as_gateway_error,
)
from gateway.metering import UPSTREAM_BROKE_OFF, Ticket, chat_estimates
from gateway.pending_admission import CLIENT_CLOSED, admitted_call
from gateway.providers.base import ChatCall, Completion, ReframedStream, UpstreamStream
from gateway.routing.catalog import CatalogEntry
from gateway.routing.router import resolve_chat
from gateway.schemas.openai import ChatRequest, decode_chat_request
from gateway.state import AppState

log = logging.getLogger("klawd")

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
SSE_RAW_HEADERS = encode_headers(SSE_HEADERS)


async def chat_completions(scope: Scope, receive: Receive, send: Send) -> None:
    """A plain ASGI endpoint (the hottest route skips Starlette's request and response objects;
    errors raised here become the envelope in GatewayMiddleware, as Starlette's would)."""
    state: AppState = scope["state"]["klawd"]  # scope_state(scope), inline
    now = time.time()  # the key's check, and the answer's `created`
    authorization, cache_mode = two_headers(scope, b"authorization", CACHE_HEADER)
    auth = await state.keys.authenticate(authorization, now)
    body = await read_body(receive)
    chat = decode_chat_request(body)
    # Only what this key may use (403 if nothing): a cached answer is keyed by these, so one
    # key never gets another's answer from a model outside its list.
    targets = state.meter.allowed(auth, chat.model, resolve_chat(state.catalog, chat, body))
    lookup = (
        None
        if cache_mode is None  # the client did not ask: the cache is not consulted
        else await state.cache.consult(
            cache_mode, auth.account_id, "chat", [t.model.id for t in targets], body
        )
    )
    if lookup is not None and lookup.answer is not None:
        await _serve_cached(state, scope, receive, send, auth, chat, targets, lookup.answer)
        return
    # The admission is sent; on Redis the upstream call is prepared while its reply travels, and
    # nothing leaves for the upstream before it admitted (gateway/admission_gate.py).
    # The worst-case cost over the targets the key may use, and the upstream token estimate
    reserve_micros, tokens = chat_estimates(chat, targets)
    pending = await state.meter.start(
        auth, scope["state"]["request_id"], chat.model, targets, reserve_micros, True
    )
    response_id = ids.new_id("chatcmpl-", 12)
    created = int(now)
    # The upstream call under its admission, and its ticket (gateway/pending_admission.py);
    # each try's call passed as made (a local would hold the request for the stream's life).
    if chat.stream:
        stream, target, ticket = await admitted_call(
            pending,
            state.retrier,
            _stream_attempt(state, chat, body, response_id, created),
            True,
            tokens,
        )
    else:
        completion, target, ticket = await admitted_call(
            pending,
            state.retrier,
            _answer_attempt(state, chat, body, response_id, created),
            False,
            tokens,
        )
    # The headers built as bytes (the same names, values and order as the dictionaries the
    # other routes encode): served by, the limits, the cache's answer if asked (and the cost).
    headers = [
        *_served_by_raw(target.model.id, target.model.provider),
        *ticket.admission.raw_headers(),
    ]
    if lookup is not None:
        headers += encode_headers(lookup.header())
    if chat.stream:
        # This frame lets the body go; a scanned request's messages not yet read still view it
        # (a memoryview until a route reads them), as the decoded messages were held before.
        del body
        if lookup is not None and lookup.key is not None:
            stream = AssemblingStream(stream, state.cache.saver(lookup, target))
        sending = send_route_stream(
            state,
            receive,
            send,
            [*SSE_RAW_HEADERS, *headers],
            # A reframed stream's relay is stepped by send_event_stream itself (no generator)
            ReframedRelay(state, ticket, chat, stream, target)
            if isinstance(stream, ReframedStream)
            else relay(state, ticket, chat, stream, target),
            KEEPALIVE,
            DRAIN_EVENT,
            # The provider's own stream knows its last piece (ends the body in that send).
            stream.finished if isinstance(stream, ReframedStream) else None,
        )
        # This frame waits as long as the stream is open: it keeps nothing the stream does not
        # (the relay keeps the request's prompt size, not the request).
        del headers, pending, targets, chat
        await sending
        return
    cost = state.meter.settle(ticket, target, completion.usage, 0, 200, False)
    if ticket.spec.tokens_per_minute:  # (no coroutine made when no token limit applies)
        await state.meter.charge_tokens(ticket, completion.usage)
    answer = completion.json()
    if lookup is not None:
        await state.cache.save(lookup, target, completion.usage, answer)
    headers.append((b"x-klawd-cost-usd", format_usd(cost).encode()))
    await send_json_raw(send, 200, answer, headers)


async def _serve_cached(
    state: AppState,
    scope: Scope,
    receive: Receive,
    send: Send,
    auth: AuthContext,
    chat: ChatRequest,
    targets: list[CatalogEntry],
    answer: CachedAnswer,
) -> None:
    """A cache hit: admitted (it counts against the request limits) with nothing reserved,
    settled at no cost (ledger, metrics and log line say so), served as the client asked:
    the stored answer, or its replay as whole chunk events."""
    ticket = await state.meter.admit(
        auth, scope["state"]["request_id"], chat.model, targets, lambda _: 0
    )
    state.meter.settle(
        ticket, state.catalog.get(answer.model), TokenUsage(0, 0), 0, 200, chat.stream
    )
    headers = (
        {"x-klawd-model": answer.model, "x-klawd-provider": answer.provider}
        | ticket.admission.headers()
        | {"x-klawd-cost-usd": format_usd(0), "x-klawd-cache": "hit"}
    )
    response_id = ids.new_id("chatcmpl-", 12)
    created = int(time.time())
    if not chat.stream:
        completion = chat_completion(answer.body, response_id, created)
        await send_json(send, completion, headers)
        return
    events = chat_events(answer.body, response_id, created, chat.include_usage, 0.0)
    await send_route_stream(
        state, receive, send, SSE_HEADERS | headers, _once(events), KEEPALIVE, DRAIN_EVENT
    )


async def _once(piece: bytes) -> AsyncGenerator[bytes, None]:
    yield piece


@functools.lru_cache(maxsize=1024)  # a catalog's models and providers: encoded once each
def _served_by_raw(model_id: str, provider: str) -> tuple[tuple[bytes, bytes], ...]:
    return (
        (b"x-klawd-model", model_id.encode("latin-1")),
        (b"x-klawd-provider", provider.encode("latin-1")),
    )


def _answer_attempt(
    state: AppState, chat: ChatRequest, body: bytes, response_id: str, created: int
) -> Callable[[CatalogEntry], Awaitable[Completion]]:
    """Each try of a single answer: the provider's awaitable itself (no coroutine of our own
    around it: one frame less on every step of the upstream call)."""

    def attempt(target: CatalogEntry) -> Awaitable[Completion]:
        call = ChatCall(chat, body, target, response_id, created)
        return state.providers[target.model.provider].complete(call)

    return attempt


def _stream_attempt(
    state: AppState, chat: ChatRequest, body: bytes, response_id: str, created: int
) -> Callable[[CatalogEntry], Awaitable[UpstreamStream]]:
    """Each try of a stream, opened before answering, so that failures before the first byte
    are real HTTP errors (retried, then falling back); after this, failures become a final
    error event and nothing is retried. (As `_answer_attempt`: no coroutine of our own.)"""

    def attempt(target: CatalogEntry) -> Awaitable[UpstreamStream]:
        call = ChatCall(chat, body, target, response_id, created)
        return state.providers[target.model.provider].stream(call)

    return attempt


DONE = b"data: [DONE]\n\n"
DRAIN_EVENT = ShuttingDown().sse_event()


def _with_cost(piece: bytes, target: CatalogEntry) -> bytes:
    """Adds `usage.cost_usd` to the usage chunk (the event just before [DONE]) that a client
    asked for with stream_options.include_usage. Events are one JSON line each, separated by a
    blank line, so the last event starts after the last "\n\n" before [DONE]."""
    head = piece[: -len(DONE)]
    start = head.rfind(b"\n\n", 0, len(head) - 2)
    start = 0 if start < 0 else start + 2
    if not head.startswith(b"data: {", start):
        return piece
    try:
        event = orjson.loads(head[start + len(b"data: ") : -2])
    except orjson.JSONDecodeError:
        return piece
    usage = event.get("usage") if isinstance(event, dict) else None
    if not isinstance(usage, dict):
        return piece
    cost = model_cost_micros(TokenUsage.from_openai(usage), target.model)
    usage["cost_usd"] = micros_to_usd(cost)
    return head[:start] + b"data: " + orjson.dumps(event) + b"\n\n" + DONE


def _cost_if_done(target: CatalogEntry, piece: bytes) -> bytes:
    """`_with_cost` for the piece that ends with [DONE]; other pieces as they are."""
    return _with_cost(piece, target) if piece.endswith(DONE) else piece


def _failure(exc: Exception, error_event: Callable[[GatewayError], bytes]) -> tuple[int, bytes]:
    """A relay's failure after the first byte: the status it bills with, and its last event."""
    error = as_gateway_error(exc)  # the status the envelope would answer (a StoreError's 503)
    if error is not None:
        return error.status, error_event(error)
    log.error("stream relay failed", exc_info=exc)
    return 500, error_event(InternalError(INTERNAL_ERROR_MESSAGE))


async def _settle(
    state: AppState,
    ticket: Ticket,
    prompt_chars: int,
    stream: UpstreamStream,
    target: CatalogEntry,
    status: int,
    failed: bool = False,
) -> None:
    """However a relay ended: the upstream released (dropped if not whole), what was generated
    billed (`prompt_chars`: the request's, for the estimate when the upstream gave no usage).
    `failed`: the stream ended on a failure after its first byte (`status` is its)."""
    await stream.aclose()
    usage = stream.usage or TokenUsage(
        estimate_tokens(prompt_chars), estimate_tokens(stream.content_chars)
    )
    broke_off = failed and status in UPSTREAM_BROKE_OFF
    state.meter.settle(ticket, target, usage, 0, status, True, broke_off, failed)
    if ticket.spec.tokens_per_minute:  # (no coroutine made when no token limit applies)
        await state.meter.charge_tokens(ticket, usage)


class ReframedRelay(Stepped):
    """`relay` of a reframed stream as a source that `send_event_stream` steps itself: the same
    pieces (the cost in the usage chunk a client asked for), the same last event on a failure
    after the first byte, the same billing however the stream ends; but no async generator
    between the two, so per piece nothing of the relay's own is made or resumed. The chat
    route's stream, and the Messages and Responses routes' (the provider's stream passed
    through, or translated: gateway/api/translated.py) when it is stepped."""

    __slots__ = ("error_event", "prompt_chars", "state", "status", "stream", "target", "ticket")

    def __init__(
        self,
        state: AppState,
        ticket: Ticket,
        chat: ChatRequest,
        stream: SteppedStream,
        target: CatalogEntry,
        error_event: Callable[[GatewayError], bytes] = GatewayError.sse_event,
        cost_in_usage: bool = True,
    ) -> None:
        self.step = stream.step
        self.arrival = stream.arrival
        self.edit = (
            functools.partial(_cost_if_done, target)
            if cost_in_usage and chat.include_usage
            else None
        )
        self.state = state
        self.ticket = ticket
        # what the settlement reads of the request (held for the stream's life: not the request)
        self.prompt_chars = chat.prompt_chars()
        self.stream = stream
        self.target = target
        self.error_event = error_event
        self.status = 0  # a failure's, once one ended the stream

    def failed(self, exc: Exception) -> bytes:
        self.status, piece = _failure(exc, self.error_event)
        return piece

    def deliver_to(self, deliver: Deliver | None) -> None:
        self.stream.deliver_to(deliver)

    def close(self, whole: bool, drained: bool) -> Awaitable[None]:
        # `_settle`'s coroutine itself: no coroutine of this method's own around it.
        failed = self.status != 0
        status = self.status or (
            200 if whole else ShuttingDown.status if drained else CLIENT_CLOSED
        )
        return _settle(
            self.state, self.ticket, self.prompt_chars, self.stream, self.target, status, failed
        )


async def relay(
    state: AppState,
    ticket: Ticket,
    chat: ChatRequest,
    stream: UpstreamStream,
    target: CatalogEntry,
    error_event: Callable[[GatewayError], bytes] = GatewayError.sse_event,
    cost_in_usage: bool = True,
) -> AsyncGenerator[bytes, None]:
    """The relay of the streaming routes: each piece is one or more whole SSE events, written
    in one send; a failure after the first byte is a last event in the route's own format
    (`error_event`). Whatever ends the stream (done, upstream failure, client gone, shutdown's
    drain), what was generated is billed. `cost_in_usage`: the OpenAI usage chunk a client asked
    for gets `usage.cost_usd`. (The chat route relays a reframed stream by `ReframedRelay`.)"""
    status = CLIENT_CLOSED
    failed = False
    add_cost = cost_in_usage and chat.include_usage
    prompt_chars = chat.prompt_chars()
    del chat  # the generator's frame lives as long as the stream: not the request
    try:
        if isinstance(stream, ReframedStream):
            # Its pieces stepped to and its bytes awaited here: no coroutine of the stream's
            # per piece, one frame less resumed on every read (the same pieces as `async for`).
            step, arrival = stream.step, stream.arrival
            while (piece := step()) != b"":
                if piece is None:
                    await arrival()
                    continue
                if add_cost and piece.endswith(DONE):
                    piece = _with_cost(piece, target)
                yield piece
        else:
            async for piece in stream:
                if add_cost and piece.endswith(DONE):
                    piece = _with_cost(piece, target)
                yield piece
        status = 200
    except asyncio.CancelledError as exc:
        if state.streams.drained(exc):
            status = ShuttingDown.status
        raise
    except Exception as exc:
        failed = True
        status, piece = _failure(exc, error_event)
        yield piece
    finally:
        # No anyio shield here (it cost 16-20 us a stream): the gateway cancels with asyncio's
        # own `Task.cancel`, which an anyio shield does not hold back, and after the one cancel
        # that ends a stream these awaits run normally.
        await _settle(state, ticket, prompt_chars, stream, target, status, failed)
