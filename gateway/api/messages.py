"""POST /v1/messages: the Anthropic Messages API in front of every model.

The chat request path, not a second gateway: auth (`x-api-key` or `Authorization: Bearer`) →
decode → translate to the OpenAI-shaped ChatRequest (gateway/messages.py) → route →
admit (limits + credit reservation) → retrier (retries, fallbacks, circuits) → provider →
relay with keepalive → settle (ledger, metrics, request log). Per target:

- a provider that speaks the Messages API (`MessagesProvider`: kind anthropic) gets the
  client's body with only `model` rewritten, and its stream is relayed event for event
  (Rust reframer `anthropic_passthrough`, which also reads usage for billing);
- every other provider gets the translated ChatRequest; its answer (a chat.completion, or
  OpenAI chunks from the provider's own reframer) is translated back (`to_message`, Rust
  reframer `openai_to_anthropic`). Gemini therefore streams Gemini → OpenAI chunks →
  Anthropic events: two Rust passes, one translation to maintain. A stream's two run in one
  Rust call per upstream read: the provider's reframer is chained into `openai_to_anthropic`
  (`route_events`) and its stream relayed as it is; a stream that is no `ReframedStream` is
  translated piece by piece (`AnthropicEvents`).

Errors are written in Anthropic's shape (`{"type":"error","error":{…}}`) with the statuses and
Retry-After of DESIGN; after the first byte, as an `event: error`. Keepalive is an Anthropic
`event: ping`. Headers as chat: x-klawd-model, x-klawd-provider, x-ratelimit-*, x-klawd-cost-usd.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway import _core, ids
from gateway.api.chat import SSE_HEADERS, ReframedRelay, relay
from gateway.api.common import app_state, json_response, read_body, send_json
from gateway.api.streaming import send_route_stream
from gateway.api.translated import TranslatedStream, stepped
from gateway.auth import AuthContext
from gateway.billing import TokenUsage, estimate_tokens, format_usd
from gateway.cache import HEADER as CACHE_HEADER
from gateway.cache import CachedAnswer
from gateway.cache.replay import AssemblingStream, ReplayedStream, chat_completion
from gateway.errors import (
    GatewayError,
    ShuttingDown,
)
from gateway.messages import PING_EVENT, error_body, error_event, to_chat_request, to_message
from gateway.metering import (
    RESERVE_TOKENS_PER_IMAGE,
    RESERVE_TOKENS_PER_MESSAGE,
    reserve_for_chat,
    upstream_tokens_for_chat,
)
from gateway.pending_admission import admitted_call
from gateway.providers.anthropic import translate_response
from gateway.providers.base import (
    ChatCall,
    Completion,
    MessagesBody,
    MessagesCall,
    ReframedStream,
    RouteEvents,
    UpstreamStream,
)
from gateway.routing.bounds import check_messages_shape
from gateway.routing.catalog import CatalogEntry
from gateway.routing.router import resolve_chat
from gateway.schemas.anthropic import decode_count_tokens_request, decode_messages_request
from gateway.schemas.openai import ChatRequest, ImagePart
from gateway.state import AppState


def anthropic_error_response(error: GatewayError) -> Response:
    return Response(
        orjson.dumps(error_body(error)),
        error.status,
        error.headers(),
        media_type="application/json",
    )


async def count_message_tokens(request: Request) -> Response:
    """`POST /v1/messages/count_tokens`: free (not admitted, not billed), like `/v1/models`.
    The first target of the model answers: an Anthropic upstream counts (pass-through); for
    other models it is the gateway's estimate (4 characters per token, 4 per message, 1600 per
    image), as the OpenAI and Gemini translations have no free counting call."""
    try:
        state = app_state(request)
        await state.keys.authenticate(_authorization(request), time.time())
        body = await request.body()
        counted = decode_count_tokens_request(body).as_messages_request()
        check_messages_shape(counted, state.settings.bounds)
        translation = to_chat_request(counted, body)  # (its `fields`: the body parsed)
        chat = translation.chat
        target = resolve_chat(state.catalog, chat, bounded=False)[0]
        provider = state.messages_providers.get(target.model.provider)
        if provider is not None:
            call = MessagesCall(
                MessagesBody(translation.fields),
                request.headers.get("anthropic-version"),
                request.headers.get("anthropic-beta"),
                target,
                "",
                False,
            )
            tokens = await provider.count_tokens(call)
        else:
            tokens = (
                estimate_tokens(chat.prompt_chars())
                + RESERVE_TOKENS_PER_MESSAGE * len(chat.messages)
                + RESERVE_TOKENS_PER_IMAGE * _image_count(chat)
            )
    except GatewayError as exc:
        return anthropic_error_response(exc)
    served = {"x-klawd-model": target.model.id, "x-klawd-provider": target.model.provider}
    return json_response({"input_tokens": tokens}, headers=served)


def _image_count(chat: ChatRequest) -> int:
    return sum(
        1
        for m in chat.messages
        if isinstance(m.content, list)
        for p in m.content
        if isinstance(p, ImagePart)
    )


async def list_models_anthropic(request: Request) -> Response:
    """`GET /v1/models` from an Anthropic client (it sends `anthropic-version`): the models
    `/v1/messages` can serve (chat models and routes), in Anthropic's list shape, one page."""
    try:
        state = app_state(request)
        await state.keys.authenticate(_authorization(request), time.time())
    except GatewayError as exc:
        return anthropic_error_response(exc)
    ids = [e.model.id for e in state.catalog.entries.values() if e.model.kind == "chat"]
    ids += list(state.catalog.routes)
    data = [
        {"type": "model", "id": i, "display_name": i, "created_at": "1970-01-01T00:00:00Z"}
        for i in ids
    ]
    return json_response(
        {
            "data": data,
            "has_more": False,
            "first_id": ids[0] if ids else None,
            "last_id": ids[-1] if ids else None,
        }
    )


def _authorization(request: Request) -> str | None:
    """Anthropic clients send `x-api-key`; `Authorization: Bearer` works as on every route."""
    key = request.headers.get("x-api-key")
    return f"Bearer {key}" if key else request.headers.get("authorization")


async def create_message(scope: Scope, receive: Receive, send: Send) -> None:
    """A plain ASGI endpoint, as the chat route's (no Starlette request or response objects,
    nor its exception middleware and send wrappers): what it raises becomes the envelope in
    Anthropic's shape in GatewayMiddleware (`_body`), as `anthropic_error_response` writes it."""
    state: AppState = scope["state"]["klawd"]
    api_key, authorization, cache_mode, version, beta = _headers(scope)
    auth = await state.keys.authenticate(
        f"Bearer {api_key}" if api_key else authorization, time.time()
    )
    body = await read_body(receive)
    anthropic_request = decode_messages_request(body)
    check_messages_shape(anthropic_request, state.settings.bounds)
    translation = to_chat_request(anthropic_request, body)
    chat = translation.chat
    # Only what this key may use (403 if nothing): cached answers are keyed by these.
    targets = state.meter.allowed(auth, chat.model, resolve_chat(state.catalog, chat))
    lookup = (
        None
        if cache_mode is None  # the client did not ask: the cache is not consulted
        else await state.cache.consult(
            cache_mode, auth.account_id, "messages", [t.model.id for t in targets], body
        )
    )
    message_id = ids.new_id("msg_", 12)
    if lookup is not None and lookup.answer is not None:
        target = state.catalog.get(lookup.answer.model) or targets[0]
        await _serve_cached(
            state, scope, receive, send, auth, chat, lookup.answer, target, message_id
        )
        return
    # Sent; on Redis the upstream call is prepared while its reply travels (admission_gate.py).
    pending = await state.meter.start(
        auth,
        scope["state"]["request_id"],
        chat.model,
        targets,
        lambda allowed: reserve_for_chat(chat, allowed),
    )
    tokens = upstream_tokens_for_chat(chat)
    # The answer as a chat.completion, the form the cache keeps (gateway/cache/replay.py).
    chat_form: dict[str, object] | None = None
    # The body as parsed once by the translation: a pass-through writes it again once (at its
    # first try), each try only its model; a translated target's body is written only if one
    # is tried. The client's anthropic-version and anthropic-beta go with it (the only client
    # headers a pass-through forwards).
    passthrough = MessagesBody(translation.fields)
    created = int(time.time())

    async def complete(target: CatalogEntry) -> Completion:
        nonlocal chat_form
        passing = state.messages_providers.get(target.model.provider)
        if passing is not None:
            message = await passing.messages(
                MessagesCall(passthrough, version, beta, target, message_id, False)
            )
            if lookup is not None and lookup.key is not None:
                call = ChatCall(chat, translation.body, target, message_id, created)
                chat_form = translate_response(call, message.body).body
            return message
        if translation.refusal is not None:
            raise translation.refusal
        answer = await state.providers[target.model.provider].complete(
            ChatCall(chat, translation.body, target, message_id, created)
        )
        chat_form = answer.body
        return Completion(to_message(answer.body, target.model.id, message_id), answer.usage)

    async def open_stream(target: CatalogEntry) -> UpstreamStream:
        passing = state.messages_providers.get(target.model.provider)
        if passing is not None:
            return await passing.messages_stream(
                MessagesCall(passthrough, version, beta, target, message_id, True)
            )
        if translation.refusal is not None:
            raise translation.refusal
        provider = state.providers[target.model.provider]
        if lookup is not None and lookup.key is not None:  # the cache keeps the OpenAI chunks
            assembling = AssemblingStream(
                await provider.stream(
                    ChatCall(chat, translation.body, target, message_id, created)
                ),
                state.cache.saver(lookup, target),
            )
            return AnthropicEvents(assembling, target, message_id)
        # The provider's reframer writes the events (a chained one), if it can.
        upstream = await provider.stream(
            ChatCall(chat, translation.body, target, message_id, created, route_events(target))
        )
        return anthropic_events(upstream, target, message_id)

    # The upstream call under the admission, and the ticket (gateway/pending_admission.py)
    if chat.stream:
        stream, target, ticket = await admitted_call(
            pending, state.retrier, open_stream, True, tokens
        )
    else:
        completion, target, ticket = await admitted_call(
            pending, state.retrier, complete, False, tokens
        )
    limit_headers = ticket.admission.headers() | (lookup.header() if lookup else {})
    served = {"x-klawd-model": target.model.id, "x-klawd-provider": target.model.provider}
    if chat.stream:
        # The provider's stream (passed through or translated) relayed as the chat route's,
        # stepped, its last piece ending the body; a cache's assembling one by the generator.
        fast = stepped(stream)
        sending = send_route_stream(
            state,
            receive,
            send,
            SSE_HEADERS | served | limit_headers,
            relay(state, ticket, chat, stream, target, error_event, cost_in_usage=False)
            if fast is None
            else ReframedRelay(state, ticket, chat, fast, target, error_event, False),
            PING_EVENT,
            DRAIN_EVENT,
            None if fast is None else fast.finished,
        )
        # This frame waits as long as the stream is open: it keeps nothing the stream does not
        # (the relay keeps the request's prompt size; the calls' closures lose their cells).
        del pending, served, limit_headers, complete, open_stream
        del body, anthropic_request, translation, chat, passthrough
        await sending
        return
    cost = state.meter.settle(ticket, target, completion.usage, 0, 200, False)
    await state.meter.charge_tokens(ticket, completion.usage)
    if lookup is not None and chat_form is not None:
        await state.cache.save(lookup, target, completion.usage, orjson.dumps(chat_form))
    await send_json(
        send, completion.body, served | limit_headers | {"x-klawd-cost-usd": format_usd(cost)}
    )


def _headers(scope: Scope) -> tuple[str | None, ...]:
    """`x-api-key`, `authorization`, `x-klawd-cache`, `anthropic-version`, `anthropic-beta`
    (each's first value), in one pass over the request's headers."""
    found: list[str | None] = [None] * len(_NAMES)
    for name, value in scope["headers"]:
        index = _NAMES.get(name)
        if index is not None and found[index] is None:
            found[index] = value.decode("latin-1")
    return tuple(found)


_NAMES = {
    name: index
    for index, name in enumerate(
        (b"x-api-key", b"authorization", CACHE_HEADER, b"anthropic-version", b"anthropic-beta")
    )
}


async def _serve_cached(
    state: AppState,
    scope: Scope,
    receive: Receive,
    send: Send,
    auth: AuthContext,
    chat: ChatRequest,
    answer: CachedAnswer,
    target: CatalogEntry,
    message_id: str,
) -> None:
    """A cache hit (kept as a chat.completion): admitted, free, logged as a hit; the message,
    or its events from the same Rust reframer a translated stream goes through."""
    ticket = await state.meter.admit(
        auth, scope["state"]["request_id"], target.model.id, [target], lambda _: 0
    )
    state.meter.settle(ticket, target, TokenUsage(0, 0), 0, 200, chat.stream)
    headers = (
        {"x-klawd-model": answer.model, "x-klawd-provider": answer.provider}
        | ticket.admission.headers()
        | {"x-klawd-cost-usd": format_usd(0), "x-klawd-cache": "hit"}
    )
    created = int(time.time())
    if not chat.stream:
        completion = chat_completion(answer.body, message_id, created)
        await send_json(send, to_message(completion, answer.model, message_id), headers)
        return
    replay = ReplayedStream(answer.body, answer.usage, message_id, created)
    await send_route_stream(
        state,
        receive,
        send,
        SSE_HEADERS | headers,
        _pieces(AnthropicEvents(replay, target, message_id)),
        PING_EVENT,
        DRAIN_EVENT,
    )


async def _pieces(stream: UpstreamStream) -> AsyncGenerator[bytes, None]:
    async for piece in stream:
        yield piece


DRAIN_EVENT = error_event(ShuttingDown())


def route_events(target: CatalogEntry) -> RouteEvents:
    """What asks a provider's stream for Anthropic events (its reframer's second stage, which
    reads only the message id and the model: the `ChatCall`'s)."""
    return RouteEvents("openai_to_anthropic", "{}", _untranslatable(target))


def _untranslatable(target: CatalogEntry) -> str:
    return f"The stream of '{target.model.id}' could not be translated to Anthropic events."


def anthropic_events(
    upstream: UpstreamStream, target: CatalogEntry, message_id: str
) -> UpstreamStream:
    """The stream as Anthropic events: the provider's as it is if its reframer writes them
    (asked with `route_events`: message_start its first piece, before the upstream's first
    byte; usage, stop reason and relayed characters its first stage's, as they bill the
    request), else translated here. The error and drain events carry no count of the events
    before them: nothing else is asked of the reframer."""
    if isinstance(upstream, ReframedStream) and upstream.route_reframer() is not None:
        return upstream
    return AnthropicEvents(upstream, target, message_id)


class AnthropicEvents(TranslatedStream):
    """A provider's OpenAI chunk stream that is no chained `ReframedStream` (a cache's
    assembling or replayed one, the echo provider's...), reframed to Anthropic events by the
    Rust core (message_start at once, as Anthropic sends it, before the upstream's first
    chunk)."""

    __slots__ = ()

    def __init__(self, upstream: UpstreamStream, target: CatalogEntry, message_id: str) -> None:
        super().__init__(
            upstream,
            _core.Reframer("openai_to_anthropic", target.model.id, message_id, 0, True),
            _untranslatable(target),
        )
