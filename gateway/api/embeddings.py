"""POST /v1/embeddings, OpenAI Embeddings-shaped, for OpenAI-shaped and Gemini upstreams.

Billed and limited like chat: auth → decode → resolve (an `embedding` model, then its
fallbacks) → admit (request limits + a reservation of the estimated prompt tokens times input
price) → retrier (embeddings are idempotent: retried and fallen back like chat) → provider →
settle (prompt tokens times input price; ledger, metrics) → respond with x-klawd-model,
x-klawd-provider, x-ratelimit-*, x-klawd-cost-usd.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.common import app_state, authenticate, json_response
from gateway.auth import AuthContext
from gateway.billing import TokenUsage, format_usd, token_cost_micros
from gateway.cache import CachedAnswer
from gateway.errors import ServiceUnavailable
from gateway.metering import RESERVE_CHARS_PER_TOKEN
from gateway.pending_admission import admitted_call
from gateway.providers.base import EmbeddingCall, EmbeddingResult
from gateway.routing.catalog import CatalogEntry
from gateway.routing.router import resolve_embedding
from gateway.schemas.embeddings import decode_embedding_request
from gateway.state import AppState

EmbedCall = Callable[[EmbeddingCall], Awaitable[EmbeddingResult]]


async def create_embeddings(request: Request) -> Response:
    state = app_state(request)
    auth = await authenticate(request)
    body = await request.body()
    embedding = decode_embedding_request(body)
    # Only what this key may use (403 if nothing): cached answers are keyed by these.
    targets = state.meter.allowed(
        auth, embedding.model, resolve_embedding(state.catalog, embedding.model)
    )
    lookup = await state.cache.consult(
        request.headers.get("x-klawd-cache"),
        auth.account_id,
        "embeddings",
        [t.model.id for t in targets],
        body,
    )
    if lookup is not None and lookup.answer is not None:
        return await _serve_cached(state, request, auth, lookup.answer)
    worst = TokenUsage(embedding.reserve_tokens(RESERVE_CHARS_PER_TOKEN), 0)
    # Sent; on Redis the upstream call is prepared while its reply travels (admission_gate.py).
    pending = await state.meter.start(
        auth,
        request.state.request_id,
        embedding.model,
        targets,
        lambda allowed: max(
            token_cost_micros(worst, t.model.input_usd_per_mtok, 0.0) for t in allowed
        ),
    )
    tokens = worst.prompt_tokens

    async def attempt(target: CatalogEntry) -> EmbeddingResult:
        # None if the provider has no `embed`: what `isinstance(p, EmbeddingProvider)` told,
        # without the runtime Protocol's walk of its members (~110K instructions a try).
        embed: EmbedCall | None = getattr(state.providers[target.model.provider], "embed", None)
        if embed is None:
            raise ServiceUnavailable(
                f"The provider '{target.model.provider}' cannot embed.",
                connect_failed=True,  # nothing was sent: the next target may be tried
            )
        return await embed(EmbeddingCall(embedding, body, target))

    result, target, ticket = await admitted_call(pending, state.retrier, attempt, False, tokens)
    limit_headers = ticket.admission.headers() | (lookup.header() if lookup else {})
    usage = TokenUsage(result.prompt_tokens, 0)
    cost = state.meter.settle(ticket, target, usage, 0, 200, False)
    await state.meter.charge_tokens(ticket, usage)
    answer = {
        "object": "list",
        "data": result.data,
        "model": target.model.id,
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
    }
    if lookup is not None:
        await state.cache.save(lookup, target, usage, orjson.dumps(answer))
    return json_response(
        answer,
        headers={
            "x-klawd-model": target.model.id,
            "x-klawd-provider": target.model.provider,
            "x-klawd-cost-usd": format_usd(cost),
        }
        | limit_headers,
    )


async def _serve_cached(
    state: AppState, request: Request, auth: AuthContext, answer: CachedAnswer
) -> Response:
    """A cache hit: admitted (it counts against request limits), free, logged as a hit."""
    served = state.catalog.get(answer.model)
    ticket = await state.meter.admit(
        auth, request.state.request_id, answer.model, [served] if served else [], lambda _: 0
    )
    state.meter.settle(ticket, served, TokenUsage(0, 0), 0, 200, False)
    return Response(
        answer.body,
        headers={
            "x-klawd-model": answer.model,
            "x-klawd-provider": answer.provider,
            "x-klawd-cost-usd": format_usd(0),
            "x-klawd-cache": "hit",
        }
        | ticket.admission.headers(),
        media_type="application/json",
    )
