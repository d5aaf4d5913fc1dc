"""The span exporter child of a gateway worker (gateway/tracing/pipe.py starts it).

    python -m gateway.tracing.exporter_child <traces url> <service name>

Reads length-prefixed msgpack frames of span rows on stdin (`otel.OpenSpan.row`), makes each a
span with the OpenTelemetry SDK's tracer (`SpanMaker`: the ids, times, parent and attributes the
gateway recorded; the SDK's attribute checks and limits) and sends them with the official
OTLP/HTTP protobuf exporter. It ends at the end of its input, after sending what it read: the
gateway closes the pipe on shutdown (or the pipe closes when the gateway's process dies), so
Ctrl-C and SIGTERM to the process group are left to the parent.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from typing import IO, Any

import msgspec
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

SCOPE_NAME = "klawd-gateway"
_decode = msgspec.msgpack.Decoder().decode


class HandedIds(IdGenerator):
    """The ids the gateway gave the span being made (from the SDK's random id generator)."""

    def __init__(self) -> None:
        self.trace_id = 0
        self.span_id = 0

    def generate_trace_id(self) -> int:
        return self.trace_id

    def generate_span_id(self) -> int:
        return self.span_id

    def is_trace_id_random(self) -> bool:
        return True  # the gateway's RandomIdGenerator made them


class Collected(SpanProcessor):
    """The spans made, as they end, for the exporter."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


class SpanMaker:
    """Spans made by the SDK's tracer from the gateway's rows. Every row is a sampled span (the
    gateway ran the parent-based ratio sampler), so this tracer samples all it is given."""

    def __init__(self, resource: Resource) -> None:
        self._ids = HandedIds()
        self._collected = Collected()
        provider = TracerProvider(
            resource=resource, sampler=ALWAYS_ON, id_generator=self._ids, shutdown_on_exit=False
        )
        provider.add_span_processor(self._collected)
        self._tracer = provider.get_tracer(SCOPE_NAME)

    def make(self, rows: Sequence[Sequence[Any]]) -> list[ReadableSpan]:
        for row in rows:
            self._make(row)
        spans, self._collected.spans = self._collected.spans, []
        return spans

    def _make(self, row: Sequence[Any]) -> None:
        (name, trace_id, span_id, parent_id, parent_remote, parent_flags, state) = row[:7]
        kind, start, end, attributes, error = row[7:]
        self._ids.trace_id = int.from_bytes(trace_id, "big")
        self._ids.span_id = span_id
        context = None
        if parent_id is not None:
            parent = SpanContext(
                self._ids.trace_id,
                parent_id,
                parent_remote,
                TraceFlags(parent_flags),
                TraceState.from_header([state]) if state else None,
            )
            context = trace.set_span_in_context(NonRecordingSpan(parent))
        span = self._tracer.start_span(
            name, context=context, kind=SpanKind(kind), attributes=attributes, start_time=start
        )
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=end)


def read_exact(stream: IO[bytes], size: int) -> bytes | None:
    """`size` bytes, or None at the end of the input (a partial frame at the end is dropped)."""
    chunks = []
    while size:
        chunk = stream.read(size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    url, service_name = argv
    maker = SpanMaker(Resource.create({"service.name": service_name}))
    exporter = OTLPSpanExporter(endpoint=url)
    stdin = sys.stdin.buffer
    while (header := read_exact(stdin, 4)) is not None:
        frame = read_exact(stdin, int.from_bytes(header, "big"))
        if frame is None:
            break
        exporter.export(maker.make(_decode(frame)))
    exporter.shutdown()  # type: ignore[no-untyped-call]
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
