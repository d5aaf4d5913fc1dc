"""POST /v1/chat/completions: auth → decode → route → upstream (with fallbacks) → respond."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.api.common import app_state, authenticate, json_response
from gateway.billing import format_usd, token_cost_micros
from gateway.errors import (
    INTERNAL_ERROR_MESSAGE,
    BadGateway,
    GatewayError,
    GatewayTimeout,
    InternalError,
    RateLimited,
    ServiceUnavailable,
)
from gateway.providers.base import ChatCall, Completion, UpstreamStream
from gateway.routing.catalog import CatalogEntry
from gateway.routing.router import resolve_chat
from gateway.schemas.openai import ChatRequest, decode_chat_request
from gateway.state import AppState

log = logging.getLogger("klawd")

# Upstream failures after which the next target of a route (or a model's fallback) is tried.
FALLBACK_ON = (ServiceUnavailable, RateLimited, GatewayTimeout, BadGateway)

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def chat_completions(request: Request) -> Response:
    state = app_state(request)
    await authenticate(request)
    body = await request.body()
    chat = decode_chat_request(body)
    targets = resolve_chat(state.catalog, chat)
    response_id = f"chatcmpl-{secrets.token_hex(12)}"
    created = int(time.time())
    if chat.stream:
        stream, target = await _open_stream(state, chat, body, targets, response_id, created)
        return StreamingResponse(
            _relay(stream),
            media_type="text/event-stream",
            headers=SSE_HEADERS | _served_by(target),
        )
    completion, target = await _complete(state, chat, body, targets, response_id, created)
    cost = token_cost_micros(
        completion.usage, target.model.input_usd_per_mtok, target.model.output_usd_per_mtok
    )
    return json_response(
        completion.body, headers=_served_by(target) | {"x-klawd-cost-usd": format_usd(cost)}
    )


def _served_by(target: CatalogEntry) -> dict[str, str]:
    return {"x-klawd-model": target.model.id, "x-klawd-provider": target.model.provider}


async def _complete(
    state: AppState,
    chat: ChatRequest,
    body: bytes,
    targets: list[CatalogEntry],
    response_id: str,
    created: int,
) -> tuple[Completion, CatalogEntry]:
    last_error: GatewayError | None = None
    for target in targets:
        call = ChatCall(chat, body, target, response_id, created)
        try:
            return await state.providers[target.model.provider].complete(call), target
        except FALLBACK_ON as exc:
            log.info("target %s failed (%s); trying the next", target.model.id, exc.type)
            last_error = exc
    raise last_error or ServiceUnavailable("No target could serve the request.")


async def _open_stream(
    state: AppState,
    chat: ChatRequest,
    body: bytes,
    targets: list[CatalogEntry],
    response_id: str,
    created: int,
) -> tuple[UpstreamStream, CatalogEntry]:
    """Opens the upstream stream before answering, so that failures before the first byte are
    real HTTP errors (and can fall back); after this, failures become a final error event."""
    last_error: GatewayError | None = None
    for target in targets:
        call = ChatCall(chat, body, target, response_id, created)
        try:
            return await state.providers[target.model.provider].stream(call), target
        except FALLBACK_ON as exc:
            log.info("target %s failed (%s); trying the next", target.model.id, exc.type)
            last_error = exc
    raise last_error or ServiceUnavailable("No target could serve the request.")


async def _relay(stream: UpstreamStream) -> AsyncIterator[bytes]:
    """Each piece is one or more whole SSE events, written in one send."""
    try:
        async for piece in stream:
            yield piece
    except GatewayError as exc:
        yield exc.sse_event()
    except Exception:
        log.exception("stream relay failed")
        yield InternalError(INTERNAL_ERROR_MESSAGE).sse_event()
    finally:
        await stream.aclose()
