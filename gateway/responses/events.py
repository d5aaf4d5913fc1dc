"""A provider's stream as Responses API events, written by the Rust reframer
`openai_to_responses`, each with its `sequence_number`.

Two ways, the same bytes. A provider whose stream is a `ReframedStream` writes them itself:
its reframer is chained (`RouteEvents`: the upstream's events → OpenAI chunks → Responses
events in one Rust call per upstream read) and its pieces are relayed as they are
(`ReframedEvents`). Any other stream (a cache's assembling or replayed one, a provider with a
stream of its own) is translated here, piece by piece (`ResponseEvents`, over
gateway/api/translated.py). Either way the reframer counts the events it returned and keeps the
final response object (from `response.completed` / `response.incomplete`) for the store, so
that a failure after the first byte is numbered after the last event sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from gateway import _core
from gateway.api.streaming import Deliver
from gateway.api.translated import TranslatedStream
from gateway.errors import GatewayError
from gateway.providers.base import ReframedStream, RouteEvents, StreamOver, UpstreamStream
from gateway.responses.answer import failure_events
from gateway.routing.catalog import CatalogEntry


def route_events(target: CatalogEntry, fields: dict[str, Any]) -> RouteEvents:
    """What asks a provider's stream for Responses API events (its reframer's second stage)."""
    return RouteEvents(
        "openai_to_responses", orjson.dumps(fields).decode(), _untranslatable(target)
    )


def _untranslatable(target: CatalogEntry) -> str:
    return f"The stream of '{target.model.id}' could not be translated to Responses API events."


class _Numbered:
    """What the route reads beside the pieces: the failure events, numbered after the events
    sent, and the finished response object."""

    __slots__ = ()

    _reframer: _core.Reframer
    _target: CatalogEntry
    _response_id: str
    _created_at: int
    _fields: dict[str, Any]

    def _untaken(self) -> int:
        raise NotImplementedError

    def error_event(self, error: GatewayError) -> bytes:
        """The events that end this stream after a failure (the relay's error format), numbered
        after the last event sent: not after one written but not yet taken by the relay (a
        drain that comes first ends the stream without it)."""
        return failure_events(
            error,
            (self._reframer.events or 0) - self._untaken(),
            self._response_id,
            self._created_at,
            self._target.model.id,
            self._fields,
        )

    @property
    def final(self) -> dict[str, Any] | None:
        """The finished response object, once the reframer wrote it."""
        raw = self._reframer.final_response
        return None if raw is None else orjson.loads(raw)


class ReframedEvents(_Numbered, StreamOver):
    """The provider's stream, whose reframer writes the Responses events itself (chained):
    relayed stepped as the chat route's, its `step`, `arrival`, `finished` and `deliver_to`
    the stream's own (no frame of this object's per piece). Its first piece is the opening
    events (response.created, response.in_progress), before the upstream's first byte."""

    __slots__ = (
        "_created_at",
        "_fields",
        "_reframer",
        "_response_id",
        "_target",
        "arrival",
        "deliver_to",
        "finished",
        "step",
    )

    stepped = True

    def __init__(
        self,
        upstream: ReframedStream,
        reframer: _core.Reframer,
        target: CatalogEntry,
        response_id: str,
        created_at: int,
        fields: dict[str, Any],
    ) -> None:
        super().__init__(upstream)
        self._reframer = reframer
        self._target = target
        self._response_id = response_id
        self._created_at = created_at
        self._fields = fields
        self.step: Callable[[], bytes | None] = upstream.step
        self.arrival = upstream.arrival
        self.finished: Callable[[], bool] = upstream.finished
        self.deliver_to: Callable[[Deliver | None], None] = upstream.deliver_to

    def _untaken(self) -> int:
        upstream = self._upstream
        assert isinstance(upstream, ReframedStream)  # noqa: S101 (always)
        return upstream.untaken_events()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._upstream.__aiter__()


class ResponseEvents(_Numbered, TranslatedStream):
    """response.created and response.in_progress at once, before the upstream's first token;
    a stepped stream over the provider's own (gateway/api/translated.py)."""

    __slots__ = ("_created_at", "_fields", "_response_id", "_target")

    def __init__(
        self,
        upstream: UpstreamStream,
        target: CatalogEntry,
        response_id: str,
        created_at: int,
        fields: dict[str, Any],
    ) -> None:
        self._target = target
        self._response_id = response_id
        self._created_at = created_at
        self._fields = fields
        super().__init__(
            upstream,
            _core.Reframer(
                "openai_to_responses",
                target.model.id,
                response_id,
                created_at,
                True,
                response_fields=orjson.dumps(fields).decode(),
            ),
            _untranslatable(target),
        )

    def _untaken(self) -> int:
        return self._held.count(b"\n\n")


def response_events(
    upstream: UpstreamStream,
    target: CatalogEntry,
    response_id: str,
    created_at: int,
    fields: dict[str, Any],
) -> ReframedEvents | ResponseEvents:
    """The stream as Responses events: as it is if its reframer writes them (asked with
    `route_events`), else translated here."""
    if isinstance(upstream, ReframedStream):
        reframer = upstream.route_reframer()
        if reframer is not None:
            return ReframedEvents(upstream, reframer, target, response_id, created_at, fields)
    return ResponseEvents(upstream, target, response_id, created_at, fields)
