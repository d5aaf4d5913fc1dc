"""The span exporter child of a gateway worker (gateway/tracing/pipe.py starts it).

    python -m gateway.tracing.exporter_child <traces url> <service name>

Reads length-prefixed msgpack frames of span rows on stdin, rebuilds each as the SDK's
`ReadableSpan` (the same resource and instrumentation scope the gateway's tracer has) and sends
them with the official OTLP/HTTP protobuf exporter. It ends at the end of its input, after
sending what it read: the gateway closes the pipe on shutdown (or the pipe closes when the
gateway's process dies), so Ctrl-C and SIGTERM to the process group are left to the parent.
"""

from __future__ import annotations

import signal
import sys
from typing import IO, Any

import msgspec
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

SCOPE = InstrumentationScope("klawd-gateway")
_decode = msgspec.msgpack.Decoder().decode


def span_from_row(row: list[Any], resource: Resource) -> ReadableSpan:
    """The span `pipe.span_row` described."""
    (name, trace_id, span_id, flags, state, parent_id, parent_remote, kind, start, end) = row[:10]
    attributes, status_code, status_description, events = row[10:]
    trace_id = int.from_bytes(trace_id, "big")
    trace_state = TraceState.from_header([state]) if state else None
    context = SpanContext(trace_id, span_id, False, TraceFlags(flags), trace_state)
    parent = (
        None
        if parent_id is None
        else SpanContext(trace_id, parent_id, parent_remote, TraceFlags(flags))
    )
    return ReadableSpan(
        name,
        context=context,
        parent=parent,
        resource=resource,
        attributes=attributes,
        events=[Event(n, attrs, timestamp) for n, timestamp, attrs in events],
        kind=SpanKind(kind),
        status=Status(StatusCode(status_code), status_description),
        start_time=start,
        end_time=end,
        instrumentation_scope=SCOPE,
    )


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
    resource = Resource.create({"service.name": service_name})
    exporter = OTLPSpanExporter(endpoint=url)
    stdin = sys.stdin.buffer
    while (header := read_exact(stdin, 4)) is not None:
        frame = read_exact(stdin, int.from_bytes(header, "big"))
        if frame is None:
            break
        exporter.export([span_from_row(row, resource) for row in _decode(frame)])
    exporter.shutdown()  # type: ignore[no-untyped-call]
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
