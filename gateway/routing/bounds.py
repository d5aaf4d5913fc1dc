"""Bounds on one chat request, checked after decoding and routing, before any reservation or
upstream call (docs/decisions/0013-bounds-and-egress.md). Pure: no I/O.

`check_chat_bounds(request, targets, bounds)` is the one entry point: every route that turns its
body into a ChatRequest (chat, /v1/messages, the Responses API) gets it from `resolve_chat`.

- Shape: the numbers of messages, content parts (all messages together), tools and stop
  sequences stay within `[bounds]`; else 400 `invalid_request`, code `request_too_complex`,
  `param` naming the field. (JSON nesting is bounded for every body when it is decoded:
  gateway/schemas/decoding.py.)
- Context: a target fits when the estimated prompt plus the output the client asked for
  explicitly (`max_completion_tokens` or `max_tokens`; nothing when unset, since the model may
  then stop wherever its context ends) is at most its `context_length` (0: unknown, always
  fits). Targets that do not fit are dropped (a fallback that fits still serves); when none
  fits: 400 `invalid_request`, code `context_length_exceeded`, nothing reserved or charged.
"""

from __future__ import annotations

import math

from gateway.errors import InvalidRequest
from gateway.routing.catalog import CatalogEntry
from gateway.schemas.anthropic import MessagesRequest
from gateway.schemas.openai import ChatRequest
from gateway.settings import BoundsSettings

# Framing tokens per message (role, separators), as OpenAI's own counting guide adds.
TOKENS_PER_MESSAGE = 4
# The least any provider counts for an image (OpenAI's low detail): the estimate stays low,
# so that a request is refused only when it surely cannot fit.
TOKENS_PER_IMAGE = 85


class ContextLengthExceeded(InvalidRequest):
    def __init__(self, message: str) -> None:
        super().__init__(message, param="messages", code="context_length_exceeded")


def estimate_prompt_tokens(request: ChatRequest, chars_per_token: float) -> int:
    """The documented estimate of a prompt's tokens when no tokenizer is at hand."""
    chars, images, _, messages = request.prompt_counts
    return (
        math.ceil(chars / chars_per_token)
        + TOKENS_PER_MESSAGE * messages
        + TOKENS_PER_IMAGE * images
    )


def requested_output(request: ChatRequest) -> int:
    """The output the client asked for explicitly (0 when it left it to the model)."""
    return request.max_completion_tokens or request.max_tokens or 0


def check_counts(
    bounds: BoundsSettings, *, messages: int, parts: int, tools: int, stops: int
) -> None:
    """Raises InvalidRequest (code `request_too_complex`) when a count is past its bound."""
    if (
        messages <= bounds.max_messages
        and parts <= bounds.max_content_parts
        and tools <= bounds.max_tools
        and stops <= bounds.max_stop_sequences
    ):
        return
    counts = (
        ("messages", "messages", messages, bounds.max_messages, "max_messages"),
        ("messages", "content parts", parts, bounds.max_content_parts, "max_content_parts"),
        ("tools", "tools", tools, bounds.max_tools, "max_tools"),
        ("stop", "stop sequences", stops, bounds.max_stop_sequences, "max_stop_sequences"),
    )
    for param, what, count, bound, setting in counts:
        if count > bound:
            raise InvalidRequest(
                f"The request has {count} {what}; this gateway accepts at most {bound} "
                f"(bounds.{setting}).",
                param=param,
                code="request_too_complex",
            )


def check_shape(request: ChatRequest, bounds: BoundsSettings) -> None:
    stop = request.stop
    _, _, parts, messages = request.prompt_counts
    check_counts(
        bounds,
        messages=messages,
        parts=parts,
        tools=len(request.tools or ()),
        stops=0 if stop is None else 1 if isinstance(stop, str) else len(stop),
    )


def check_messages_shape(request: MessagesRequest, bounds: BoundsSettings) -> None:
    """The same bounds on an Anthropic Messages request, before it is translated (which would
    otherwise copy every message once more)."""
    check_counts(
        bounds,
        messages=len(request.messages),
        parts=sum(len(m.content) for m in request.messages if isinstance(m.content, list)),
        tools=len(request.tools or ()),
        stops=len(request.stop_sequences or ()),
    )


def fits(entry: CatalogEntry, needed_tokens: int) -> bool:
    limit = entry.model.context_length
    return limit == 0 or needed_tokens <= limit


def check_chat_bounds(
    request: ChatRequest, targets: list[CatalogEntry], bounds: BoundsSettings
) -> list[CatalogEntry]:
    """The targets (in their order) that can hold the request; raises when its shape is past
    `bounds` or when no target's context can hold it."""
    check_shape(request, bounds)
    return fitting_targets(request, targets, bounds)


def fitting_targets(
    request: ChatRequest, targets: list[CatalogEntry], bounds: BoundsSettings
) -> list[CatalogEntry]:
    """The targets whose context holds the request (ContextLengthExceeded when none does)."""
    if not bounds.check_context or not targets:
        return targets
    prompt = estimate_prompt_tokens(request, bounds.context_chars_per_token)
    needed = prompt + requested_output(request)
    fitting = [t for t in targets if fits(t, needed)]
    if fitting:
        return fitting
    largest = max(t.model.context_length for t in targets)
    asked = requested_output(request)
    output = f" plus the {asked} output tokens asked for" if asked else ""
    raise ContextLengthExceeded(
        f"This request needs about {prompt} prompt tokens{output}, more than the "
        f"{largest}-token context of '{request.model}'"
        f"{' (the largest of its models)' if len(targets) > 1 else ''}. "
        "Shorten the messages or lower max_tokens."
    )
