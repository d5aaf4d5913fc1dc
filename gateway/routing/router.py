"""resolve(model id, request) -> the ordered list of catalog entries to try. Pure: no I/O.

- A catalog model: itself, then its configured `fallbacks`.
- A route with policy "ordered" (klawd/standard): its targets in order, skipping unavailable ones.
- A route with policy "cheapest" (klawd/auto): among its targets, those that are available, are chat
  models, have every capability the request needs (tools, vision, json), can honour every field
  it sends (a translating provider refuses, say, `logprobs` with a 400) and whose context length
  holds the estimated prompt plus the output budget; sorted by list price (input + output per
  million tokens), ties kept in the configured order. Requests that use tools, or need more than
  `escalate_above_tokens`, skip the tiers cheaper than `escalate_to` (klawd/auto: tools or over
  100K tokens go to claude-sonnet-4's tier or above). Open circuits are skipped when the call is
  made (routing/retry.py). The first is the choice; the rest are its fallbacks. The response
  headers say which model served.

Then the request's bounds (gateway/routing/bounds.py): a shape past `[bounds]` is refused, and
targets whose context cannot hold the prompt are dropped (a model the client named must hold
it itself: 400 `context_length_exceeded`, as its upstream would answer).
"""

from __future__ import annotations

import orjson

from gateway.errors import InvalidRequest, ServiceUnavailable, model_not_found
from gateway.providers.registry import refused_field
from gateway.requestlog import note_requested_model
from gateway.routing.bounds import check_shape, estimate_prompt_tokens, fits, fitting_targets
from gateway.routing.catalog import Catalog, CatalogEntry
from gateway.schemas.openai import ChatRequest
from gateway.settings import RouteSettings


def _price(entry: CatalogEntry) -> float:
    return entry.model.input_usd_per_mtok + entry.model.output_usd_per_mtok


def _honouring(
    request: ChatRequest, route: str, body: bytes, suitable: list[CatalogEntry]
) -> list[CatalogEntry]:
    """The targets that can honour every field of the request (a translating provider refuses
    one it cannot honour with a 400, which is not a reason to fall back)."""
    if not body:
        return suitable
    fields = orjson.loads(body)
    refusals = [refused_field(e.provider.kind, fields, request.n) for e in suitable]
    honouring = [e for e, refused in zip(suitable, refusals, strict=True) if refused is None]
    if not honouring:
        field = next(refused for refused in refusals if refused is not None)
        raise InvalidRequest(
            f"No model behind '{route}' accepts `{field}`; remove it or name a model.",
            param=field,
        )
    return honouring


def _escalate(
    catalog: Catalog,
    route: RouteSettings,
    request: ChatRequest,
    budget: int,
    suitable: list[CatalogEntry],
) -> list[CatalogEntry]:
    """Long or tool-using requests skip the tiers cheaper than `escalate_to` (when something
    at or above that tier can serve them; otherwise the cheaper ones still do)."""
    if route.escalate_to is None:
        return suitable
    long_request = route.escalate_above_tokens is not None and budget > route.escalate_above_tokens
    tools = route.escalate_for_tools and bool(request.tools)
    if not (long_request or tools):
        return suitable
    floor = _price(catalog.entries[route.escalate_to])
    escalated = [e for e in suitable if _price(e) >= floor]
    return escalated or suitable


def resolve_chat(
    catalog: Catalog, request: ChatRequest, body: bytes = b"", *, bounded: bool = True
) -> list[CatalogEntry]:
    """`body`: the request's JSON (for a policy route, the fields each target must honour).
    The request's own `models` (fallbacks, as OpenRouter takes them) follow `model`'s chain,
    each resolved the same way; a model already in the chain is not tried twice.
    `bounded=False` skips the bounds (token counting, which does not generate)."""
    note_requested_model(request.model)
    if bounded:
        check_shape(request, catalog.bounds)  # before anything else reads the whole request
    entry = catalog.entries.get(request.model)
    chain = _resolve_chat_one(catalog, request, request.model, body, entry)
    if bounded and not request.models and entry is not None:
        # a model the client named, with no fallbacks of its own, must hold the request itself
        fitting_targets(request, chain[:1], catalog.bounds)
        if len(chain) == 1:
            return chain  # it does (it would have raised): nothing more to check
    for index, model_id in enumerate(request.models or ()):
        fallback = catalog.entries.get(model_id)
        if fallback is None and model_id not in catalog.routes:
            raise model_not_found(model_id, param=f"models[{index}]")
        try:
            more = _resolve_chat_one(catalog, request, model_id, body, fallback)
        except ServiceUnavailable:
            continue  # an unavailable fallback is skipped, as a configured one is
        seen = {e.model.id for e in chain}
        chain.extend(e for e in more if e.model.id not in seen)
    return fitting_targets(request, chain, catalog.bounds) if bounded else chain


def _resolve_chat_one(
    catalog: Catalog,
    request: ChatRequest,
    model_id: str,
    body: bytes,
    entry: CatalogEntry | None,
) -> list[CatalogEntry]:
    """`entry`: the catalog's model named `model_id`, if it is one (else a route)."""
    if entry is not None:
        if entry.model.kind != "chat":
            raise InvalidRequest(
                f"The model '{entry.model.id}' is an {entry.model.kind} model, not a chat model.",
                param="model",
            )
        if entry.unavailable_reason is not None:  # not `available`
            raise ServiceUnavailable(
                f"The model '{entry.model.id}' is unavailable: {entry.unavailable_reason}."
            )
        if not entry.model.fallbacks:
            return [entry]
        chain = [entry] + [catalog.entries[f] for f in entry.model.fallbacks]
        return [e for e in chain if e.available]
    route = catalog.routes.get(model_id)
    if route is None:
        raise model_not_found(model_id)
    candidates = [catalog.entries[t] for t in route.targets]
    usable = [e for e in candidates if e.available]
    if not usable:
        reasons = "; ".join(sorted({e.unavailable_reason or "" for e in candidates}))
        raise ServiceUnavailable(f"No model behind '{model_id}' is available: {reasons}.")
    if route.policy == "ordered":
        return usable
    needed = request.needs()
    budget = (
        estimate_prompt_tokens(request, catalog.bounds.context_chars_per_token)
        + request.output_budget
    )
    capable = [
        e for e in usable if e.model.kind == "chat" and needed.issubset(e.model.capabilities)
    ]
    if not capable:
        raise InvalidRequest(
            f"No model behind '{model_id}' supports this request "
            f"(needs {sorted(needed) or 'text'}).",
            param="model",
        )
    # Those that hold the prompt and the whole output budget; else those that may still hold
    # the prompt (the bounds check then keeps the ones that do, or refuses).
    suitable = [e for e in capable if fits(e, budget)] or capable
    suitable = _honouring(request, model_id, body, suitable)
    suitable = _escalate(catalog, route, request, budget, suitable)
    order = {e.model.id: i for i, e in enumerate(suitable)}
    return sorted(
        suitable,
        key=lambda e: (_price(e), order[e.model.id]),
    )


def resolve_image(catalog: Catalog, model_id: str, n: int = 1) -> list[CatalogEntry]:
    """An image model: itself, then its available configured `fallbacks` of that kind, each
    only if it can make `n` images in one request (else 400 naming `n`)."""
    chain = _resolve_kind(catalog, model_id, "image")
    able = [e for e in chain if (e.model.max_images_per_request or n) >= n]
    if not able:
        most = max(e.model.max_images_per_request or 1 for e in chain)
        raise InvalidRequest(
            f"The image model '{model_id}' makes at most {most} image"
            f"{'s' if most > 1 else ''} per request: `n` must be {most} or less.",
            param="n",
        )
    return able


def resolve_embedding(catalog: Catalog, model_id: str) -> list[CatalogEntry]:
    """An embedding model: itself, then its available configured `fallbacks` of that kind."""
    return _resolve_kind(catalog, model_id, "embedding")


def _resolve_kind(catalog: Catalog, model_id: str, kind: str) -> list[CatalogEntry]:
    note_requested_model(model_id)
    entry = catalog.get(model_id)
    if entry is None:
        raise model_not_found(model_id)
    if entry.model.kind != kind:
        raise InvalidRequest(
            f"The model '{entry.model.id}' is a {entry.model.kind} model, not an {kind} model.",
            param="model",
        )
    if not entry.available:
        raise ServiceUnavailable(
            f"The model '{entry.model.id}' is unavailable: {entry.unavailable_reason}."
        )
    chain = [entry] + [catalog.entries[f] for f in entry.model.fallbacks]
    return [e for e in chain if e.available and e.model.kind == kind]
