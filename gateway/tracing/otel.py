"""The OpenTelemetry SDK behind the gateway's three tracing seams (see gateway/tracing/__init__).

Spans go to `{otlp_endpoint}/v1/traces` (OTLP/HTTP protobuf) from an exporter child process
(gateway/tracing/pipe.py): ending a span only turns it into a row of plain values; batches of rows
go down a pipe, and the child encodes and sends them with the official exporter, off the event
loop and out of the gateway's GIL. The sampler is parent-based over a trace-id ratio
(`sample_ratio`): a sampled incoming `traceparent` is followed, otherwise the ratio decides; an
unsampled request still has a trace id (in its log line and the `traceparent` sent upstream).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.requestlog import RequestRecord
from gateway.routing.catalog import CatalogEntry
from gateway.settings import TelemetrySettings
from gateway.tracing.pipe import PipeSpanProcessor

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


def provider_name(kind: str) -> str:
    return PROVIDER_NAMES.get(kind, kind)


class Tracing:
    def __init__(self, settings: TelemetrySettings) -> None:
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}),
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        )
        self.exporter = PipeSpanProcessor(
            settings.otlp_endpoint.rstrip("/") + "/v1/traces", settings.service_name
        )
        self.provider.add_span_processor(self.exporter)
        self.tracer = self.provider.get_tracer("klawd-gateway")
        self._propagator = TraceContextTextMapPropagator()

    # -- the request's server span (gateway/api/middleware.py) ------------------------------------
    def start_request(
        self, record: RequestRecord, path: str, headers: list[tuple[bytes, bytes]]
    ) -> None:
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in headers
            if name in (b"traceparent", b"tracestate")
        }
        parent = self._propagator.extract(carrier) if carrier else None
        # Attributes cost CPU per span twice (the SDK checks each, the exporter encodes each):
        # the server span gets its attributes once, when it ends.
        span = self.tracer.start_span(record.method, context=parent, kind=SpanKind.SERVER)
        record.operation = OPERATIONS.get(path)
        record.span = span
        record.trace_id = f"{span.get_span_context().trace_id:032x}"

    def end_request(self, record: RequestRecord) -> None:
        span: Span | None = record.span
        if span is None:
            return
        if span.is_recording():
            span.update_name(f"{record.method} {record.route}")
            span.set_attributes(_server_attributes(record))
            if record.status >= 500:
                span.set_status(Status(StatusCode.ERROR, f"HTTP {record.status}"))
        span.end()

    # -- one client span per upstream attempt (gateway/routing/retry.py) -------------------------
    def start_attempt(self, record: RequestRecord, target: CatalogEntry, attempt: int) -> Span:
        parent = trace.set_span_in_context(record.span) if record.span is not None else None
        operation = record.operation or "chat"
        upstream_model = target.model.upstream_model or target.model.id.split("/", 1)[-1]
        span = self.tracer.start_span(
            f"{operation} {upstream_model}",
            context=parent,
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": provider_name(target.provider.kind),
                "gen_ai.request.model": upstream_model,
                "klawd.deployment": target.model.provider,
                "klawd.attempt": attempt,
            },
        )
        record.upstream_span = span
        return span

    def end_attempt(self, record: RequestRecord, span: Span, error: str | None) -> None:
        record.upstream_span = None
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()

    def close(self) -> None:
        """Sends what is queued (bounded by the exporter's timeout), then stops the worker."""
        self.provider.shutdown()


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
