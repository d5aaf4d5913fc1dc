"""The gateway's side of its traces, behind the three tracing seams (see gateway/tracing/__init__).

The request path decides and names each span with the OpenTelemetry SDK's own parts: the
parent-based trace-id-ratio sampler (`sample_ratio`), the random id generator and the W3C trace
context propagator. What a span then gathers (times, attributes, status) is kept in plain values
(`OpenSpan`), and an ended, sampled span goes as one row down a pipe to the exporter child
(gateway/tracing/pipe.py), where it is made the SDK's span object (`ReadableSpan`, with the
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

from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, TraceFlags, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.requestlog import RequestRecord
from gateway.routing.catalog import CatalogEntry
from gateway.settings import TelemetrySettings
from gateway.tracing.pipe import SpanPipe

# gen_ai.operation.name of the API routes (OpenTelemetry GenAI semantic conventions).
OPERATIONS: Mapping[str, str] = {
    "/v1/chat/completions": "chat",
    "/v1/messages": "chat",
    "/v1/responses": "chat",
    "/v1/embeddings": "embeddings",
}
# gen_ai.provider.name by provider kind: the conventions' well-known values where there is one.
PROVIDER_NAMES: Mapping[str, str] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "azure": "azure.ai.openai",
    "bedrock": "aws.bedrock",
    "vertex": "gcp.vertex_ai",
}
_SAMPLED, _RANDOM = int(TraceFlags.SAMPLED), int(TraceFlags.RANDOM_TRACE_ID)
_SERVER, _CLIENT = SpanKind.SERVER.value, SpanKind.CLIENT.value
_SAMPLED_DECISIONS = (Decision.RECORD_AND_SAMPLE,)  # Decision.is_sampled(), typed


def provider_name(kind: str) -> str:
    return PROVIDER_NAMES.get(kind, kind)


class OpenSpan:
    """A span being recorded: what the exporter child needs to make it the SDK's span object.

    `flags` are the span's W3C trace flags as the SDK gives them (sampled, random trace id);
    `parent_flags` those of its parent, `state` the trace's `tracestate` header (the parent's,
    which the SDK's sampler hands on), or None."""

    __slots__ = (
        "attributes",
        "error",
        "flags",
        "name",
        "parent_flags",
        "parent_id",
        "parent_remote",
        "span_id",
        "start_ns",
        "state",
        "trace_id",
    )

    def __init__(
        self,
        name: str,
        trace_id: int,
        span_id: int,
        flags: int,
        parent: tuple[int, bool, int] | None,
        state: str | None,
        attributes: dict[str, Any] | None,
    ) -> None:
        self.name = name
        self.trace_id = trace_id
        self.span_id = span_id
        self.flags = flags
        self.parent_id: int | None = None
        self.parent_remote, self.parent_flags = False, 0
        if parent is not None:
            self.parent_id, self.parent_remote, self.parent_flags = parent
        self.state = state
        self.attributes = attributes
        self.error: str | None = None  # the status description of an ERROR status
        self.start_ns = time.time_ns()

    @property
    def sampled(self) -> bool:
        return bool(self.flags & _SAMPLED)

    def row(self, kind: int, attributes: dict[str, Any] | None) -> tuple[Any, ...]:
        """The ended span in plain values (read by `exporter_child.SpanMaker`); the 128-bit
        trace id as bytes: msgpack integers stop at 64 bits."""
        return (
            self.name,
            self.trace_id.to_bytes(16, "big"),
            self.span_id,
            self.parent_id,
            self.parent_remote,
            self.parent_flags,
            self.state,
            kind,
            self.start_ns,
            time.time_ns(),
            attributes,
            self.error,
        )


class Tracing:
    def __init__(self, settings: TelemetrySettings) -> None:
        self.sampler = ParentBased(TraceIdRatioBased(settings.sample_ratio))
        self.ids = RandomIdGenerator()
        self._random_ids = _RANDOM if self.ids.is_trace_id_random() else 0
        self._propagator = TraceContextTextMapPropagator()
        traces_url = settings.otlp_endpoint.rstrip("/") + "/v1/traces"
        self.pipe = SpanPipe(traces_url, settings.service_name)

    # -- the request's server span (gateway/api/middleware.py) ------------------------------------
    def start_request(
        self, record: RequestRecord, path: str, headers: list[tuple[bytes, bytes]]
    ) -> None:
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in headers
            if name in (b"traceparent", b"tracestate")
        }
        context = self._propagator.extract(carrier) if carrier else None
        remote = get_current_span(context).get_span_context() if context is not None else None
        if remote is not None and remote.is_valid:
            trace_id = remote.trace_id
            parent = (remote.span_id, True, int(remote.trace_flags))
            random_bit = parent[2] & _RANDOM
        else:
            trace_id, parent, random_bit = self.ids.generate_trace_id(), None, self._random_ids
        # the SDK's sampler, as its tracer calls it (the span's name is final only at its end)
        decision = self.sampler.should_sample(context, trace_id, record.method, SpanKind.SERVER)
        sampled = _SAMPLED if decision.decision in _SAMPLED_DECISIONS else 0
        state = decision.trace_state.to_header() if decision.trace_state else None
        span = OpenSpan(
            record.method,
            trace_id,
            self.ids.generate_span_id(),
            sampled | random_bit,
            parent,
            state or None,
            None,
        )
        record.operation = OPERATIONS.get(path)
        record.span = span
        record.trace_id = f"{trace_id:032x}"

    def end_request(self, record: RequestRecord) -> None:
        span: OpenSpan | None = record.span
        if span is None or not span.flags & _SAMPLED:
            return
        if record.status >= 500:
            span.error = f"HTTP {record.status}"
        span.name = f"{record.method} {record.route}"
        self.pipe.add(span.row(_SERVER, _server_attributes(record)))

    # -- one client span per upstream attempt (gateway/routing/retry.py) -------------------------
    def start_attempt(self, record: RequestRecord, target: CatalogEntry, attempt: int) -> OpenSpan:
        server: OpenSpan = record.span
        operation = record.operation or "chat"
        upstream_model = target.model.upstream_model or target.model.id.split("/", 1)[-1]
        # a child of the server span: the parent-based sampler follows its sampled flag
        span = OpenSpan(
            f"{operation} {upstream_model}",
            server.trace_id,
            self.ids.generate_span_id(),
            server.flags,
            (server.span_id, False, server.flags),
            server.state,
            {
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": provider_name(target.provider.kind),
                "gen_ai.request.model": upstream_model,
                "klawd.deployment": target.model.provider,
                "klawd.attempt": attempt,
            },
        )
        record.upstream_span = span
        return span

    def end_attempt(self, record: RequestRecord, span: OpenSpan, error: str | None) -> None:
        record.upstream_span = None
        if not span.flags & _SAMPLED:
            return
        attributes = span.attributes
        if error is not None and attributes is not None:
            attributes["error.type"] = error
            span.error = error
        self.pipe.add(span.row(_CLIENT, attributes))

    def close(self) -> None:
        """Sends what is queued (bounded by the exporter's timeout), then stops the child."""
        self.pipe.shutdown()


def _server_attributes(record: RequestRecord) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "http.route": record.route,
        "http.response.status_code": record.status,
    }
    if record.status >= 400:
        attributes["error.type"] = str(record.status)
    if record.operation is not None:
        attributes["gen_ai.operation.name"] = record.operation
    kind = record.provider_kind
    optional = {
        "gen_ai.request.model": record.request_model,
        "gen_ai.response.model": record.model,
        "gen_ai.provider.name": provider_name(kind) if kind is not None else None,
        "klawd.deployment": record.provider,
        "klawd.account_id": record.account_id,
        "klawd.cache": record.cache,
    }
    attributes.update({k: v for k, v in optional.items() if v is not None})
    if record.model is not None:
        attributes["gen_ai.usage.input_tokens"] = record.prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = record.completion_tokens
        attributes["klawd.cost_usd"] = record.cost_usd
    if record.finish_reasons:
        attributes["gen_ai.response.finish_reasons"] = record.finish_reasons
    return attributes
