"""The gateway's side of its traces, behind the three tracing seams (see gateway/tracing/__init__).

The request path decides each span with the OpenTelemetry SDK's own parts: the parent-based
trace-id-ratio sampler (`sample_ratio`; for a request without trace context, its root sampler's
decision made from its own bound without the call) and the W3C trace context propagator; ids are
random bytes. The spans being recorded are the Rust core's small frozen objects
(`gateway._core.ServerSpan`, `ClientSpan`: ids, flags, the parent, the start time), made by
its `SpanRecorder` (ids cut from `os.urandom` read 4 KiB at a time, a root's sampling decision
from the root sampler's own bound), and an ended, sampled span is one call to the recorder with
the request's raw values, which writes its row (gateway/tracing/rows.py) straight into the
msgpack frame that goes down a pipe to the exporter child (gateway/tracing/pipe.py), where its
name and attributes are built and it is made the SDK's span object (`ReadableSpan`, with the
SDK's attribute checks and limits: exporter_child.SpanMaker) and the official OTLP/HTTP
exporter sends it. The SDK's span objects cost ~65 µs of CPU each in a live worker and nothing
on the request path reads them, so they are made in the child, off the event loop and out of the
gateway's GIL (docs/decisions/0019-cache-and-traces.md gives the measurements). A sampled incoming
`traceparent` is followed; an unsampled request still has a trace id (in its log line and the
`traceparent` sent upstream).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from opentelemetry.sdk.trace.sampling import Decision, ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, TraceFlags, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway._core import ClientSpan, ServerSpan
from gateway.requestlog import RequestRecord
from gateway.routing.catalog import CatalogEntry
from gateway.settings import TelemetrySettings
from gateway.tracing.pipe import SpanPipe
from gateway.tracing.rows import provider_name

__all__ = ["OPERATIONS", "ClientSpan", "ServerSpan", "Tracing", "provider_name"]

# gen_ai.operation.name of the API routes (OpenTelemetry GenAI semantic conventions).
OPERATIONS: Mapping[str, str] = {
    "/v1/chat/completions": "chat",
    "/v1/messages": "chat",
    "/v1/responses": "chat",
    "/v1/embeddings": "embeddings",
}
_SAMPLED, _RANDOM = int(TraceFlags.SAMPLED), int(TraceFlags.RANDOM_TRACE_ID)
_SERVER, _CLIENT = SpanKind.SERVER.value, SpanKind.CLIENT.value
_SAMPLED_DECISIONS = (Decision.RECORD_AND_SAMPLE,)  # Decision.is_sampled(), typed
_TRACE_CONTEXT = (b"traceparent", b"tracestate")
_ROW_ERRORS = (OverflowError, TypeError, ValueError)  # a value the recorder does not write


class Tracing:
    def __init__(self, settings: TelemetrySettings) -> None:
        root = TraceIdRatioBased(settings.sample_ratio)
        self.sampler = ParentBased(root)
        self._propagator = TraceContextTextMapPropagator()
        traces_url = settings.otlp_endpoint.rstrip("/") + "/v1/traces"
        # A root's decision is the root sampler's, `trace_id & TRACE_ID_LIMIT < bound` (what
        # TraceIdRatioBased.should_sample computes, its `bound` the SDK's own), made by the
        # recorder without the call when no trace context came in: at ratio 1.0, every root.
        self.pipe = SpanPipe(traces_url, settings.service_name, root.bound)
        self.recorder = self.pipe.recorder

    # -- the request's server span (gateway/api/middleware.py) ------------------------------------
    def start_request(
        self, record: RequestRecord, path: str, headers: list[tuple[bytes, bytes]]
    ) -> None:
        span = self.recorder.start(headers)  # None: the request carries trace context
        if span is None:
            span = self._start_remote(record, headers)
        record.span = span
        record.operation = OPERATIONS.get(path)
        record.trace_id = span.trace_hex

    def _start_remote(
        self, record: RequestRecord, headers: list[tuple[bytes, bytes]]
    ) -> ServerSpan:
        """A request that came with W3C trace context: the SDK's propagator reads it and the
        SDK's parent-based sampler decides (as its tracer calls it: the span's name is final
        only at its end)."""
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in headers
            if name in _TRACE_CONTEXT
        }
        context = self._propagator.extract(carrier)
        remote = get_current_span(context).get_span_context()
        ids = self.recorder.ids()
        parent_id: bytes | None = None
        parent_flags = 0
        if remote.is_valid:
            trace_id = remote.trace_id.to_bytes(16, "big")
            parent_id, parent_flags = remote.span_id.to_bytes(8, "big"), int(remote.trace_flags)
            random_bit = parent_flags & _RANDOM
        else:
            trace_id, random_bit = ids[:16], _RANDOM
        decision = self.sampler.should_sample(
            context, int.from_bytes(trace_id, "big"), record.method, SpanKind.SERVER
        )
        sampled = _SAMPLED if decision.decision in _SAMPLED_DECISIONS else 0
        state = decision.trace_state.to_header() if decision.trace_state else None
        return ServerSpan(
            trace_id,
            ids[16:24],
            sampled | random_bit,
            parent_id,
            parent_id is not None,
            parent_flags,
            state or None,
            ids[24:],
        )

    def end_request(self, record: RequestRecord) -> None:
        span: ServerSpan | None = record.span
        if span is None:
            return
        try:  # the row written by the recorder when sampled; true: the frame is full
            attend = self.recorder.end_server(
                span,
                record.method,
                record.route,
                record.status,
                record.operation,
                record.request_model,
                record.model,
                record.provider_kind,
                record.provider,
                record.account_id,
                record.cache,
                record.prompt_tokens,
                record.completion_tokens,
                record.cost_usd,
                record.finish_reasons,
            )
        except _ROW_ERRORS:  # a value the recorder has no form for: msgspec's way (cast, drop)
            self.pipe.add(server_row(span, record))
            return
        if attend:
            self.pipe.attend()

    # -- one client span per upstream attempt (gateway/routing/retry.py) -------------------------
    def start_attempt(
        self, record: RequestRecord, target: CatalogEntry, attempt: int
    ) -> ClientSpan:
        span = record.upstream_span = self.recorder.client(record.span, target, attempt)
        return span

    def drop_attempt(self, record: RequestRecord) -> None:
        """The attempt started was never sent (the request's deadline passed before it left):
        no upstream attempt, so no span (nothing is recorded until a span ends)."""
        record.upstream_span = None

    def end_attempt(self, record: RequestRecord, span: ClientSpan, error: str | None) -> None:
        record.upstream_span = None
        target = span.target
        model = target.model
        try:
            attend = self.recorder.end_client(
                span,
                record.operation,
                target.provider.kind,
                model.upstream_model,
                model.id,
                model.provider,
                error,
            )
        except _ROW_ERRORS:
            self.pipe.add(client_row(span, record, error))
            return
        if attend:
            self.pipe.attend()

    def close(self) -> None:
        """Sends what is queued (bounded by the exporter's timeout), then stops the child."""
        self.pipe.shutdown()


def server_row(span: ServerSpan, record: RequestRecord) -> tuple[Any, ...]:
    """The server span's row as a tuple (rows.HEAD + rows.SERVER), for msgspec: what the
    recorder writes itself unless a value has no msgpack form it knows."""
    return (
        _SERVER,
        span.trace_id,
        span.span_id,
        span.parent_id,
        span.parent_remote,
        span.parent_flags,
        span.state,
        span.start_ns,
        time.time_ns(),
        record.method,
        record.route,
        record.status,
        record.operation,
        record.request_model,
        record.model,
        record.provider_kind,
        record.provider,
        record.account_id,
        record.cache,
        record.prompt_tokens,
        record.completion_tokens,
        record.cost_usd,
        record.finish_reasons,
    )


def client_row(span: ClientSpan, record: RequestRecord, error: Any) -> tuple[Any, ...]:
    """A client span's row as a tuple (rows.HEAD + rows.CLIENT), for msgspec (see server_row)."""
    server, target = span.server, span.target
    model = target.model
    return (
        _CLIENT,
        server.trace_id,
        span.span_id,
        server.span_id,
        False,
        server.flags,
        server.state,
        span.start_ns,
        time.time_ns(),
        record.operation,
        target.provider.kind,
        model.upstream_model,
        model.id,
        model.provider,
        span.attempt,
        error,
    )
