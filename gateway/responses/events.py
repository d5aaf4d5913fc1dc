"""A provider's OpenAI chunk stream, reframed to Responses API events by the Rust core.

The reframer `openai_to_responses` writes every event with its `sequence_number`; this wrapper
counts the events it relayed (each ends with the only blank line of its bytes: JSON escapes
newlines), so that a failure after the first byte is written as the next numbers, and keeps the
final response object (from `response.completed` / `response.incomplete`) for the store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway import _core
from gateway.billing import TokenUsage
from gateway.errors import BadGateway, GatewayError
from gateway.providers.base import UpstreamStream
from gateway.responses.answer import failure_events
from gateway.routing.catalog import CatalogEntry

# The first chunk of choice 0 carries nothing: it makes the reframer write response.created and
# response.in_progress at once, before the upstream's first token.
OPEN_RESPONSE = b'data: {"choices":[{"index":0,"delta":{}}]}\n\n'
FINAL_EVENTS = (b"event: response.completed\ndata: ", b"event: response.incomplete\ndata: ")


class ResponseEvents:
    """Usage and relayed characters are the provider stream's own (they bill the request)."""

    def __init__(
        self,
        upstream: UpstreamStream,
        target: CatalogEntry,
        response_id: str,
        created_at: int,
        fields: dict[str, Any],
    ) -> None:
        self._upstream = upstream
        self._target = target
        self._response_id = response_id
        self._created_at = created_at
        self._fields = fields
        self._reframer = _core.Reframer(
            "openai_to_responses",
            target.model.id,
            response_id,
            created_at,
            True,
            response_fields=orjson.dumps(fields).decode(),
        )
        self._sequence = 0
        self.final: dict[str, Any] | None = None  # the finished response object

    @property
    def usage(self) -> TokenUsage | None:
        return self._upstream.usage

    @property
    def content_chars(self) -> int:
        return self._upstream.content_chars

    async def aclose(self) -> None:
        await self._upstream.aclose()

    def error_event(self, error: GatewayError) -> bytes:
        """The events that end this stream after a failure (the relay's error format)."""
        return failure_events(
            error,
            self._sequence,
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

    async def __aiter__(self) -> AsyncIterator[bytes]:
        reframer = self._reframer
        try:
            yield self._relayed(reframer.feed(OPEN_RESPONSE))
            async for piece in self._upstream:
                out = reframer.feed(piece)
                if out:
                    yield self._relayed(out)
            out = reframer.finish()
            if out:
                yield self._relayed(out)
        except (_core.SseError, _core.UpstreamStreamError) as exc:
            raise BadGateway(
                f"The stream of '{self._target.model.id}' could not be translated to "
                "Responses API events."
            ) from exc
