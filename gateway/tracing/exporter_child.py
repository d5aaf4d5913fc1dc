"""The span exporter child of a gateway worker (gateway/tracing/pipe.py starts it).

    python -m gateway.tracing.exporter_child <traces url> <service name>

Reads length-prefixed msgpack frames of span rows on stdin (gateway/tracing/rows.py), makes each
a span object of the OpenTelemetry SDK (`SpanMaker`: the ids, times and parent the gateway
recorded, the name and attributes built from the request's raw values; the SDK's attribute
checks and limits) and hands each frame's spans, a batch,
to the official OTLP/HTTP protobuf exporter (one POST per frame). It ends at the end of its
input, after sending what it read: the gateway closes the pipe on shutdown (or the pipe closes
when the gateway's process dies), so Ctrl-C and SIGTERM to the process group are left to the parent.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from typing import IO, Any

import msgspec
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from gateway.tracing.rows import BODY, client_span, server_span

SCOPE_NAME = "klawd-gateway"
_decode = msgspec.msgpack.Decoder().decode
_SAMPLED, _RANDOM = int(TraceFlags.SAMPLED), int(TraceFlags.RANDOM_TRACE_ID)
_KINDS = {kind.value: kind for kind in SpanKind}
_UNSET = Status(StatusCode.UNSET)
# a row's span name, attributes and error from its kind's own values (gateway/tracing/rows.py)
_VALUES = {SpanKind.SERVER.value: server_span, SpanKind.CLIENT.value: client_span}


class OnceHashedResource(Resource):
    """The SDK's `Resource`, its hash taken once. The OTLP encoder groups each batch's spans by
    resource, which hashes it once per span, and the SDK's `Resource.__hash__` is a JSON dump of
    its attributes each time (~4 µs). A resource is immutable once made (its attributes are an
    immutable `BoundedAttributes`), so the hash it gives is the SDK's own, computed once."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


class SpanMaker:
    """The SDK's span objects (`ReadableSpan`, what a tracer's span hands its span processors when
    it ends) made from the gateway's rows, a batch at a time, for the exporter.

    The gateway made the sampling decision (the SDK's parent-based ratio sampler's) and random
    ids and recorded the span's raw values; its name and attributes are built here
    (gateway/tracing/rows.py), and what a tracer would add is made with the SDK's own parts, as
    its `start_span`, `end` and `set_status` do: the `SpanContext` with the W3C flags the tracer
    gives a sampled span (sampled, and the random-trace-id flag of its parent, or set for a root
    whose id is random), the parent's `SpanContext` and trace state, the attributes through the
    SDK's `BoundedAttributes` under its `SpanLimits` (its attribute checks, value casts, count
    and length limits, `OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT` and the rest), an ERROR `Status` with
    its description, the resource and the instrumentation scope a tracer named `klawd-gateway`
    has. tests/unit/test_span_pipe.py checks that they encode to the OTLP bytes of the spans the
    SDK's tracer makes of the same request in process. Without the tracer, its span and its
    processor chain (a lock, a `BoundedList` per span for events and for links, the sampler
    called again, the processors' `on_start`/`on_end`, the `ReadableSpan` copy at `end`) a span
    costs about a third of the CPU (docs/decisions/0019-cache-and-traces.md)."""

    def __init__(self, resource: Resource) -> None:
        self._resource = OnceHashedResource(resource)
        self._scope = InstrumentationScope(SCOPE_NAME, "", None, None)
        limits = SpanLimits()  # the SDK's defaults and OTEL_* variables, as a TracerProvider's
        self._max_attributes = limits.max_span_attributes
        self._max_length = limits.max_span_attribute_length
        self._states: dict[str, TraceState] = {}

    def make(self, rows: Sequence[Sequence[Any]]) -> list[ReadableSpan]:
        return [self._make(row) for row in rows]

    def _make(self, row: Sequence[Any]) -> ReadableSpan:
        (kind, trace_id, span_id, parent_id, parent_remote, parent_flags, state) = row[:7]
        start, end = row[7:BODY]
        name, attributes, error = _VALUES[kind](row[BODY:])
        trace_id = int.from_bytes(trace_id, "big")
        span_id = int.from_bytes(span_id, "big")
        trace_state = self._trace_state(state) if state else None
        if parent_id is None:
            parent = None
            flags = _SAMPLED | _RANDOM  # a root: the gateway made its id at random
        else:
            parent_flags = TraceFlags(parent_flags)
            parent_id = int.from_bytes(parent_id, "big")
            parent = SpanContext(trace_id, parent_id, parent_remote, parent_flags, trace_state)
            flags = _SAMPLED | (parent_flags & _RANDOM)
        checked = BoundedAttributes(self._max_attributes, attributes, True, self._max_length)
        # the checked values as a plain dict when nothing was dropped (the encoder then reads
        # them without the mapping's Python-level iteration: -3 % of the child's instructions);
        # with drops, the BoundedAttributes itself, whose count the exporter sends
        return ReadableSpan(
            name,
            SpanContext(trace_id, span_id, False, TraceFlags(flags), trace_state),
            parent,
            self._resource,
            checked.copy() if not checked.dropped else checked,
            kind=_KINDS[kind],
            status=_UNSET if error is None else Status(StatusCode.ERROR, error),
            start_time=start,
            end_time=end,
            instrumentation_scope=self._scope,
        )

    def _trace_state(self, header: str) -> TraceState:
        found = self._states.get(header)
        if found is None:
            if len(self._states) >= 1024:  # bounded: trace states come from clients
                self._states.clear()
            found = self._states[header] = TraceState.from_header([header])
        return found


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
