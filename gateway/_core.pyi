"""Stub of the Rust extension built from `rust_core/` (checked by `mypy.stubtest`)."""

from typing import Self, final

__all__ = ["Reframer", "SseError", "UpstreamStreamError", "Usage", "__version__"]
__version__: str

class SseError(ValueError):
    """Malformed or oversized upstream stream (an event larger than max_event_bytes)."""

class UpstreamStreamError(Exception):
    """The upstream stream ended without its terminator (cut off)."""

@final
class Usage:
    """Token usage in OpenAI's vocabulary (frozen)."""

    # Anthropic: input_tokens + cache_creation_input_tokens + cache_read_input_tokens.
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def total_tokens(self) -> int: ...
    # Cache reads (OpenAI prompt_tokens_details.cached_tokens, Anthropic
    # cache_read_input_tokens, Gemini cachedContentTokenCount), 0 if none.
    @property
    def cached_tokens(self) -> int: ...

@final
class Reframer:
    """One upstream stream ("openai" | "anthropic" | "gemini") reframed to OpenAI chunk events.

    feed() takes one upstream network chunk (any boundary) and returns zero or more complete
    `data: <one-line JSON>\\n\\n` events, and `data: [DONE]\\n\\n` after the terminator. After an
    upstream error event or the terminator, further input is ignored (returns b""). SseError is
    sticky: once raised, every later feed()/finish() raises it again.
    """

    # Constructed by __new__ (a PyO3 #[new]): Reframer(kind, model, response_id, created, ...).
    # kind: "openai" | "anthropic" | "gemini"; unknown kind -> ValueError. model: the gateway's
    # catalog id written into every chunk. response_id / created: of every emitted chunk
    # (anthropic/gemini; the openai kind keeps the upstream's and only rewrites "model").
    def __new__(
        cls,
        kind: str,
        model: str,
        response_id: str,
        created: int,
        include_usage: bool,
        max_event_bytes: int = 1048576,
    ) -> Self: ...
    def feed(self, data: bytes) -> bytes: ...
    def finish(self) -> bytes: ...
    @property
    def done(self) -> bool: ...
    @property
    def usage(self) -> Usage | None: ...
    @property
    def finish_reason(self) -> str | None: ...
    @property
    def upstream_error(self) -> tuple[str, str] | None: ...
    @property
    def content_chars(self) -> int: ...
