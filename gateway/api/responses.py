"""The OpenAI Responses API: `POST /v1/responses`, `GET|DELETE /v1/responses/{id}`,
`GET /v1/responses/{id}/input_items`.

The chat request path, not a second gateway: auth → decode → rebuild the conversation from
`previous_response_id` (the store) → translate to the OpenAI-shaped ChatRequest
(gateway/responses/translate.py) → route → admit (the chat route's admission: limits, credit
reservation) → retrier (retries, fallbacks, circuits) → the provider's chat call → the answer as a
Response object (gateway/responses/answer.py), or its OpenAI chunks reframed to Responses events
by the Rust core (gateway/responses/events.py) and relayed by the chat relay (keepalive, billing
of what was generated) → settle → keep the response (`store`, default true).

Errors are the gateway's envelope (OpenAI's shape); after the first byte, an `error` event and
`response.failed`. Headers as chat: x-klawd-model, x-klawd-provider, x-ratelimit-*,
x-klawd-cost-usd (non-streamed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any, NamedTuple

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway import ids
from gateway.api.chat import SSE_HEADERS, ReframedRelay, relay
from gateway.api.common import app_state, json_response, read_body, send_json, two_headers
from gateway.api.streaming import KEEPALIVE, send_route_stream
from gateway.auth import AuthContext
from gateway.billing import TokenUsage, format_usd
from gateway.cache import HEADER as CACHE_HEADER
from gateway.cache import CachedAnswer
from gateway.cache.replay import AssemblingStream, ReplayedStream, chat_completion
from gateway.errors import InvalidRequest, NotFound, ShuttingDown
from gateway.metering import Ticket, reserve_for_chat, upstream_tokens_for_chat
from gateway.pending_admission import admitted_call
from gateway.providers.base import ChatCall, Completion, UpstreamStream
from gateway.responses.answer import response_fields, to_response
from gateway.responses.events import (
    ReframedEvents,
    ResponseEvents,
    response_events,
    route_events,
)
from gateway.responses.translate import read_input, responses_param, to_chat_request
from gateway.routing.catalog import CatalogEntry
from gateway.routing.router import resolve_chat
from gateway.schemas.openai import ChatRequest
from gateway.schemas.responses import decode_responses_request
from gateway.state import AppState
from gateway.store.base import StoredResponse, StoreError

log = logging.getLogger("klawd")


async def create_response(scope: Scope, receive: Receive, send: Send) -> None:
    """A plain ASGI endpoint, as the chat route's (no Starlette request or response objects,
    nor its exception middleware and send wrappers): what it raises becomes the envelope in
    GatewayMiddleware."""
    try:
        await _create_response(scope, receive, send)
    except InvalidRequest as exc:
        # the chat path (bounds, providers) names the chat request's parameters
        exc.param = responses_param(exc.param)
        raise


async def _create_response(scope: Scope, receive: Receive, send: Send) -> None:
    state: AppState = scope["state"]["klawd"]
    authorization, asked = two_headers(scope, b"authorization", CACHE_HEADER)
    auth = await state.keys.authenticate(authorization, time.time())
    body = await read_body(receive)
    responses_request = decode_responses_request(body)
    fields: dict[str, Any] = orjson.loads(body)
    created_at = int(time.time())
    history: list[dict[str, Any]] = []
    if responses_request.previous_response_id is not None:
        previous = await state.store.get_response(
            auth.account_id, responses_request.previous_response_id, created_at
        )
        if previous is None:
            raise NotFound(
                f"Previous response with id '{responses_request.previous_response_id[:100]}' "
                "not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        history = [*previous.history, *previous.input_items, *previous.response["output"]]
        del previous  # (its items are in `history`: a stream does not hold it whole)
    input_items, turn = read_input(responses_request)
    translation = to_chat_request(responses_request, fields, history, turn)
    chat, chat_body = translation.chat, translation.body
    echoed = response_fields(responses_request)
    # Only what this key may use (403 if nothing): cached answers are keyed by these.
    targets = state.meter.allowed(auth, chat.model, resolve_chat(state.catalog, chat, chat_body))
    response_id = ids.new_id("resp_", 16)
    lookup = (
        None
        if asked is None  # the client did not ask: the cache is not consulted
        else await state.cache.consult(
            # stored responses (store: true, the default) are never cached: each is its own
            # record
            "off" if responses_request.store else asked,
            auth.account_id,
            "responses",
            [t.model.id for t in targets],
            body,
        )
    )
    if lookup is not None and lookup.answer is not None:
        target = state.catalog.get(lookup.answer.model) or targets[0]
        hit = CachedResponse(lookup.answer, target, response_id, created_at, echoed)
        await _serve_cached(state, scope, receive, send, auth, chat.stream, hit)
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
    chat_form: dict[str, Any] | None = None  # the answer as the cache keeps it
    store = responses_request.store  # (what `keep` reads of the request: not the request)

    def keep(answer: dict[str, Any]) -> StoredResponse | None:
        if not store:
            return None
        return StoredResponse(
            id=response_id,
            account_id=auth.account_id,
            created_at=created_at,
            expires_at=created_at + state.settings.responses.ttl_s,
            response=answer,
            input_items=input_items,
            history=history,
        )

    async def complete(target: CatalogEntry) -> Completion:
        nonlocal chat_form
        provider = state.providers[target.model.provider]
        answer = await provider.complete(ChatCall(chat, chat_body, target, response_id, created_at))
        chat_form = answer.body
        body = to_response(answer.body, response_id, created_at, target.model.id, echoed)
        return Completion(body, answer.usage)

    async def open_stream(target: CatalogEntry) -> ReframedEvents | ResponseEvents:
        provider = state.providers[target.model.provider]
        if lookup is not None and lookup.key is not None:  # the cache keeps the OpenAI chunks
            upstream: UpstreamStream = AssemblingStream(
                await provider.stream(ChatCall(chat, chat_body, target, response_id, created_at)),
                state.cache.saver(lookup, target),
            )
        else:  # the provider's reframer writes the events (a chained one), if it can
            upstream = await provider.stream(
                ChatCall(
                    chat, chat_body, target, response_id, created_at, route_events(target, echoed)
                )
            )
        return response_events(upstream, target, response_id, created_at, echoed)

    # The upstream call under the admission, and the ticket (gateway/pending_admission.py)
    if chat.stream:
        events, target, ticket = await admitted_call(
            pending, state.retrier, open_stream, True, tokens
        )
    else:
        completion, target, ticket = await admitted_call(
            pending, state.retrier, complete, False, tokens
        )
    limit_headers = ticket.admission.headers() | (lookup.header() if lookup else {})
    served = {"x-klawd-model": target.model.id, "x-klawd-provider": target.model.provider}
    if chat.stream:

        async def relay_and_keep(
            pieces: AsyncGenerator[bytes, None],
        ) -> AsyncGenerator[bytes, None]:
            kept = False
            async for piece in pieces:
                if not kept and events.final is not None:
                    # Kept before the piece that ends the answer goes out (a client that read
                    # it finds it), and through if the client leaves meanwhile: after its
                    # last piece, a generator's client is still watched (the stepped path's
                    # close is not, gateway/api/streaming.py). The answer is whole: as on the
                    # stepped path, a shutdown's deadline no longer ends the stream, so the
                    # client gets the response that is kept, not the drain's response.failed.
                    kept = True
                    stored = keep(events.final)
                    if stored is not None:
                        state.streams.discard(asyncio.current_task())
                        await _keep_through(state, stored)
                yield piece

        sending = send_route_stream(
            state,
            receive,
            send,
            SSE_HEADERS | served | limit_headers,
            # The provider's stream relayed as the chat route's, stepped; a cache's assembling
            # one by the generator.
            KeepingRelay(state, ticket, chat, events, target, keep)
            if events.stepped
            else relay_and_keep(
                relay(state, ticket, chat, events, target, events.error_event, cost_in_usage=False)
            ),
            KEEPALIVE,
            # a shutdown's deadline ends the stream with numbered error + response.failed
            lambda: events.error_event(ShuttingDown()),
        )
        # This frame waits as long as the stream is open: it keeps nothing the stream does not
        # (the relay keeps the request's prompt size, `keep` what a stored response needs; the
        # calls' closures lose their cells).
        del pending, served, limit_headers, complete, open_stream
        del body, fields, responses_request, translation, chat, chat_body, turn
        if not store:  # (`keep` reads them for a stored response only)
            del input_items, history
        await sending
        return
    cost = state.meter.settle(ticket, target, completion.usage, 0, 200, False)
    await state.meter.charge_tokens(ticket, completion.usage)
    await _keep(state, keep(completion.body))
    if lookup is not None and chat_form is not None:
        await state.cache.save(lookup, target, completion.usage, orjson.dumps(chat_form))
    await send_json(
        send, completion.body, served | limit_headers | {"x-klawd-cost-usd": format_usd(cost)}
    )


class KeepingRelay(ReframedRelay):
    """The stepped relay of a Responses stream: whole, the finished response is kept once the
    stream is billed, before the body's end (`relay_and_keep` keeps it before its last piece)."""

    __slots__ = ("events", "keep")

    def __init__(
        self,
        state: AppState,
        ticket: Ticket,
        chat: ChatRequest,
        events: ReframedEvents | ResponseEvents,
        target: CatalogEntry,
        keep: Callable[[dict[str, Any]], StoredResponse | None],
    ) -> None:
        super().__init__(state, ticket, chat, events, target, events.error_event, False)
        self.events = events
        self.keep = keep

    async def close(self, whole: bool, drained: bool) -> None:
        await super().close(whole, drained)
        final = self.events.final
        if whole and final is not None:
            await _keep(self.state, self.keep(final))


class CachedResponse(NamedTuple):
    answer: CachedAnswer  # kept as a chat.completion
    target: CatalogEntry
    response_id: str
    created_at: int
    echoed: dict[str, Any]


async def _serve_cached(
    state: AppState,
    scope: Scope,
    receive: Receive,
    send: Send,
    auth: AuthContext,
    stream: bool,
    hit: CachedResponse,
) -> None:
    """A cache hit: admitted, free, logged as a hit; the Response object, or its events from
    the same Rust reframer a live stream goes through."""
    ticket = await state.meter.admit(
        auth, scope["state"]["request_id"], hit.target.model.id, [hit.target], lambda _: 0
    )
    state.meter.settle(ticket, hit.target, TokenUsage(0, 0), 0, 200, stream)
    answer = hit.answer
    headers = (
        {"x-klawd-model": answer.model, "x-klawd-provider": answer.provider}
        | ticket.admission.headers()
        | {"x-klawd-cost-usd": format_usd(0), "x-klawd-cache": "hit"}
    )
    if not stream:
        completion = chat_completion(answer.body, hit.response_id, hit.created_at)
        body = to_response(completion, hit.response_id, hit.created_at, answer.model, hit.echoed)
        await send_json(send, body, headers)
        return
    replay = ReplayedStream(answer.body, answer.usage, hit.response_id, hit.created_at)
    events = ResponseEvents(replay, hit.target, hit.response_id, hit.created_at, hit.echoed)

    async def pieces() -> AsyncGenerator[bytes, None]:
        async for piece in events:
            yield piece

    await send_route_stream(
        state,
        receive,
        send,
        SSE_HEADERS | headers,
        pieces(),
        KEEPALIVE,
        lambda: events.error_event(ShuttingDown()),
    )


async def _keep(state: AppState, stored: StoredResponse | None) -> None:
    """Keeps the answer; the client has (or is getting) it, so a store failure is logged and
    the answer still goes out (a later retrieve is then a 404)."""
    if stored is None:
        return
    try:
        await state.store.put_response(stored)
    except StoreError as exc:
        log.error("store error: the response %s was not kept: %s", stored.id, exc)


async def _keep_through(state: AppState, stored: StoredResponse) -> None:
    """`_keep`, not cut by the caller's cancellation: the write is a task of its own, held by
    the app's state until it ends."""
    write = asyncio.ensure_future(_keep(state, stored))
    state.writes.add(write)
    write.add_done_callback(state.writes.discard)
    await asyncio.shield(write)


async def _stored(request: Request) -> tuple[StoredResponse, AuthContext]:
    state = app_state(request)
    auth = await state.keys.authenticate(request.headers.get("authorization"), time.time())
    response_id = request.path_params["response_id"]
    stored = await state.store.get_response(auth.account_id, response_id, int(time.time()))
    if stored is None:
        raise _not_found(response_id)
    return stored, auth


def _not_found(response_id: str) -> NotFound:
    return NotFound(
        f"No response found with id '{response_id[:100]}'.",
        param="response_id",
        code="response_not_found",
    )


async def get_response(request: Request) -> Response:
    stored, _ = await _stored(request)
    return json_response(stored.response)


async def delete_response(request: Request) -> Response:
    state = app_state(request)
    auth = await state.keys.authenticate(request.headers.get("authorization"), time.time())
    response_id = request.path_params["response_id"]
    if not await state.store.delete_response(auth.account_id, response_id):
        raise _not_found(response_id)
    return json_response({"id": response_id, "object": "response", "deleted": True})


MAX_PAGE = 100


async def list_input_items(request: Request) -> Response:
    """A cursor page of the response's input items: `limit` (1-100, 20), `order` (desc by
    default, as OpenAI's), `after` (an item id)."""
    stored, _ = await _stored(request)
    query = request.query_params
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest("limit must be an integer from 1 to 100.", param="limit")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be 'asc' or 'desc'.", param="order")
    items = stored.input_items if order == "asc" else stored.input_items[::-1]
    after = query.get("after")
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise InvalidRequest(f"No input item with id '{after[:100]}'.", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )
