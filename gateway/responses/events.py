"""A provider's OpenAI chunk stream, reframed to Responses API events by the Rust core.

The reframer `openai_to_responses` writes every event with its `sequence_number`; this wrapper
counts the events it relayed (each ends with the only blank line of its bytes: JSON escapes
newlines), so that a failure after the first byte is written as the next numbers, and keeps the
final response object (from `response.completed` / `response.incomplete`) for the store.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway import _core
from gateway.api.translated import TranslatedStream
from gateway.errors import GatewayError
from gateway.providers.base import UpstreamStream
from gateway.responses.answer import failure_events
from gateway.routing.catalog import CatalogEntry

FINAL_EVENTS = (b"event: response.completed\ndata: ", b"event: response.incomplete\ndata: ")


class ResponseEvents(TranslatedStream):
    """response.created and response.in_progress at once, before the upstream's first token;
    a stepped stream over the provider's own (gateway/api/translated.py)."""

    __slots__ = ("_created_at", "_fields", "_response_id", "_sequence", "_target", "final")

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
        self._sequence = 0
        self.final: dict[str, Any] | None = None  # the finished response object
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
            f"The stream of '{target.model.id}' could not be translated to Responses API events.",
        )

    def error_event(self, error: GatewayError) -> bytes:
        """The events that end this stream after a failure (the relay's error format), numbered
        after the last event sent: not after one translated but held for the relay's next step
        (a drain that comes first ends the stream without it)."""
        return failure_events(
            error,
            self._sequence - self._held.count(b"\n\n"),
            self._response_id,
            self._created_at,
            self._target.model.id,
            self._fields,
        )

    def _relayed(self, out: bytes) -> bytes:
        self._sequence += out.count(b"\n\n")
        for head in FINAL_EVENTS:
            start = out.rfind(head)
            if start >= 0:
                data = out[start + len(head) : out.index(b"\n\n", start)]
                self.final = orjson.loads(data)["response"]
        return out
