"""The span pipe (gateway/tracing/pipe.py, exporter_child.py): a span crosses to the exporter
child unchanged, and a child that falls behind makes the gateway drop and count, never wait."""

from __future__ import annotations

import os
import signal

import msgspec
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.tracing import pipe
from gateway.tracing.exporter_child import span_from_row
from gateway.tracing.pipe import PipeSpanProcessor, span_row


def test_a_span_rebuilt_from_its_row_encodes_to_the_same_otlp_bytes() -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "klawd-test"}))
    collected = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(collected))
    tracer = provider.get_tracer("klawd-gateway")
    parent = TraceContextTextMapPropagator().extract(
        {
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "tracestate": "vendor=abc",
        }
    )
    server = tracer.start_span("POST /v1/chat/completions", context=parent, kind=SpanKind.SERVER)
    server.set_attributes(
        {
            "http.response.status_code": 502,
            "klawd.cost_usd": 0.00002,
            "gen_ai.response.finish_reasons": ["stop", "length"],
            "klawd.cache": "miss",
        }
    )
    server.add_event("retry", {"attempt": 1})
    server.set_status(Status(StatusCode.ERROR, "HTTP 502"))
    client = tracer.start_span(
        "chat gpt-4o",
        context=trace.set_span_in_context(server),
        kind=SpanKind.CLIENT,
        attributes={"klawd.attempt": 0, "gen_ai.request.model": "gpt-4o"},
    )
    client.end()
    server.end()
    spans = collected.get_finished_spans()
    resource = spans[0].resource

    frame = msgspec.msgpack.encode([span_row(s, s.get_span_context()) for s in spans])
    rebuilt = [span_from_row(row, resource) for row in msgspec.msgpack.decode(frame)]

    original = encode_spans(spans).SerializeToString(deterministic=True)
    assert encode_spans(rebuilt).SerializeToString(deterministic=True) == original
    assert rebuilt[1].parent is not None and rebuilt[1].parent.is_remote
    assert rebuilt[1].context is not None and rebuilt[1].context.trace_state.get("vendor") == "abc"


def test_a_child_that_does_not_read_makes_the_gateway_drop_and_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipe, "MAX_BUFFERED_BYTES", 256 * 1024)
    monkeypatch.setattr(pipe, "BATCH_SPANS", 64)
    processor = PipeSpanProcessor("http://127.0.0.1:9/v1/traces", "klawd-test")
    child = processor._child
    assert child is not None
    os.kill(child.pid, signal.SIGSTOP)  # the child reads nothing: the pipe (64 KiB) fills
    try:
        provider = TracerProvider()
        provider.add_span_processor(processor)
        tracer = provider.get_tracer("klawd-gateway")
        attributes = {"klawd.deployment": "x" * 200}
        for _ in range(4000):  # ~1 MiB of rows: more than the pipe and the buffer hold
            tracer.start_span("POST /v1/chat/completions", attributes=attributes).end()
        assert processor.dropped_spans > 0
        assert len(processor._unsent) <= pipe.MAX_BUFFERED_BYTES
    finally:
        # the endpoint refuses: the child's exporter gives up on each batch; shutdown is bounded
        os.kill(child.pid, signal.SIGKILL)
        processor.shutdown()
    assert child.returncode is not None
