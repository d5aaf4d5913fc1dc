"""A provider's OpenAI chunk stream reframed once more, into a route's own events: the Messages
API's (Rust reframer `openai_to_anthropic`) or the Responses API's (`openai_to_responses`).

Over the provider's own `ReframedStream` it is a stepped stream, relayed as the chat route's
is (`ReframedRelay`, gateway/api/chat.py): `step()` takes the provider's next piece and
translates it, and a piece that arrives while the relay waits is translated in the upstream
read's callback and handed to the relay's `deliver` (gateway/api/streaming.py), so it wakes
nobody. Over any other stream (a cache's assembling or replayed one) it is an async iterator.
Either way the same pieces: the opening events first (written before the upstream's first
chunk), then each upstream piece's translation, then what `finish()` writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from gateway import _core
from gateway.api.streaming import Deliver
from gateway.errors import BadGateway
from gateway.providers.base import ReframedStream, StreamOver, UpstreamStream

# The first chunk of choice 0 carries nothing: it makes the reframer write its opening events
# (message_start; response.created and response.in_progress) at once.
OPENING = b'data: {"choices":[{"index":0,"delta":{}}]}\n\n'
_TRANSLATION_ERRORS = (_core.SseError, _core.UpstreamStreamError)


class TranslatedStream(StreamOver):
    """Usage and relayed characters are the provider stream's own (they bill the request).
    `failure`: the message of the BadGateway raised when the translation fails. Subclasses see
    each piece before it goes out (`_relayed`)."""

    __slots__ = (
        "_deliver",
        "_ended",
        "_failure",
        "_held",
        "_kept",
        "_reframer",
        "arrival",
    )

    def __init__(self, upstream: UpstreamStream, reframer: _core.Reframer, failure: str) -> None:
        super().__init__(upstream)
        # When `stepped`: what the relay awaits when `step()` answers None (the provider's
        # answer's own method: no frame of this object's per wait).
        self.arrival: Callable[[], asyncio.Future[None]] = (
            upstream.arrival if isinstance(upstream, ReframedStream) else _not_stepped
        )
        self._reframer = reframer
        self._failure = failure
        self._ended = False  # finish() was called
        # A translated piece for the next step: the opening events, or one the relay's
        # `deliver` declined (a keepalive was being sent).
        self._held = self._relayed(reframer.feed(OPENING))
        self._kept: BadGateway | None = None  # a failure of a translation in the read's callback
        self._deliver: Deliver | None = None

    def _relayed(self, out: bytes) -> bytes:
        return out

    @property
    def stepped(self) -> bool:
        """Whether `step()`, `arrival()`, `finished()` and `deliver_to()` serve (over the
        provider's `ReframedStream`); else it is read with `async for`."""
        return isinstance(self._upstream, ReframedStream)

    def step(self) -> bytes | None:
        """As `ReframedStream.step`: the next piece, None to wait, b"" at the end."""
        held = self._held
        if held:
            self._held = b""
            return held
        kept = self._kept
        if kept is not None:
            self._kept = None
            raise kept
        upstream = self._upstream
        assert isinstance(upstream, ReframedStream)  # noqa: S101 (only when `stepped`)
        reframer = self._reframer
        try:
            while not self._ended:
                piece = upstream.step()
                if piece is None:
                    return None
                if piece:
                    out = reframer.feed(piece)
                else:
                    self._ended = True
                    out = reframer.finish()
                if out:
                    return self._relayed(out)
        except _TRANSLATION_ERRORS as exc:
            raise BadGateway(self._failure) from exc
        return b""

    def finished(self) -> bool:
        """Whether the piece just taken was the last (the stream ended whole)."""
        upstream = self._upstream
        assert isinstance(upstream, ReframedStream)  # noqa: S101 (only when `stepped`)
        return not self._held and self._reframer.finished() and upstream.finished()

    def deliver_to(self, deliver: Deliver | None) -> None:
        """The provider's pieces that arrive while the relay waits are translated in the
        read's callback and handed to `deliver`. (The upstream's answer then holds this
        stream, which holds the answer, until `deliver_to(None)` at the stream's end.)"""
        upstream = self._upstream
        assert isinstance(upstream, ReframedStream)  # noqa: S101 (only when `stepped`)
        self._deliver = deliver
        upstream.deliver_to(None if deliver is None else self._translate)

    def _translate(self, piece: bytes, waiter: asyncio.Future[None]) -> bool:
        """The upstream's `deliver`: always takes the piece. Its translation goes to the
        relay's `deliver`; one it declines is held for the relay's next step, and a failure
        kept for it, the relay woken for either."""
        try:
            out = self._reframer.feed(piece)
        except _TRANSLATION_ERRORS as exc:
            failure = BadGateway(self._failure)
            failure.__cause__ = exc.with_traceback(None)  # (its frames would hold this stream)
            self._kept = failure
            waiter.set_result(None)
            return True
        if not out:
            return True  # nothing to send yet: the relay waits on
        out = self._relayed(out)
        deliver: Callable[[bytes, asyncio.Future[None]], bool] | None = self._deliver
        if deliver is None or not deliver(out, waiter):
            self._held = out
            if not waiter.done():
                waiter.set_result(None)
        return True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        held, self._held = self._held, b""
        yield held
        reframer = self._reframer
        try:
            async for piece in self._upstream:
                out = reframer.feed(piece)
                if out:
                    yield self._relayed(out)
            out = reframer.finish()
            if out:
                yield self._relayed(out)
        except _TRANSLATION_ERRORS as exc:
            raise BadGateway(self._failure) from exc


class SteppedStream(UpstreamStream, Protocol):
    """A stream relayed stepped (`ReframedRelay`): the provider's, one translated here, or
    one whose reframer writes the route's events itself (gateway/responses/events.py)."""

    def step(self) -> bytes | None: ...
    def arrival(self) -> Awaitable[None]: ...
    def deliver_to(self, deliver: Deliver | None) -> None: ...


def _not_stepped() -> asyncio.Future[None]:
    raise TypeError("not a stepped stream: read it with `async for`")


def stepped(stream: UpstreamStream) -> ReframedStream | TranslatedStream | None:
    """A route's stream if it is relayed stepped (`ReframedRelay`), None if as an iterator."""
    if isinstance(stream, ReframedStream):
        return stream
    if isinstance(stream, TranslatedStream) and stream.stepped:
        return stream
    return None
