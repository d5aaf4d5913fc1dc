"""The span pipe (gateway/tracing/otel.py, pipe.py, exporter_child.py): the spans the exporter
child makes from the gateway's rows are the spans the SDK's tracer makes in process, to the byte
of OTLP; and a child that falls behind makes the gateway drop and count, never wait."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.requestlog import RequestRecord
from gateway.routing.catalog import CatalogEntry
from gateway.settings import ModelSettings, ProviderSettings, TelemetrySettings
from gateway.tracing import pipe, upstream_traceparent
from gateway.tracing.exporter_child import SpanMaker
from gateway.tracing.otel import Tracing
from gateway.tracing.pipe import SpanPipe
from tests.fakes.otlp_receiver import OtlpReceiver

SERVICE = "klawd-test"
TARGET = CatalogEntry(
    ModelSettings(id="openai/gpt-4o", provider="openai-eu", upstream_model="gpt-4o"),
    ProviderSettings(kind="openai", base_url="http://127.0.0.1:9/v1"),
    None,
)


class FixedIds(IdGenerator):
    """The same ids, in the order asked, for the gateway's spans and the reference spans."""

    def __init__(self) -> None:
        self._ids: Iterator[int] = iter(range(0x1000, 0x2000))

    def generate_span_id(self) -> int:
        return next(self._ids)

    def generate_trace_id(self) -> int:
        return 0x0AF7651916CD43DD8448EB211C80319C

    def is_trace_id_random(self) -> bool:
        return True


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Tracing, list[tuple[Any, ...]]]]:
    """A Tracing whose rows are kept here instead of going to a child."""
    tracing = Tracing(TelemetrySettings(otlp_endpoint="http://127.0.0.1:9", sample_ratio=1.0))
    tracing.pipe.shutdown()
    rows: list[tuple[Any, ...]] = []
    monkeypatch.setattr(tracing.pipe, "add", rows.append)
    tracing.ids = FixedIds()
    yield tracing, rows


def gateway_request(tracing: Tracing, headers: list[tuple[bytes, bytes]]) -> RequestRecord:
    """A request as the gateway's seams see it: a failed attempt, then a served one."""
    record = RequestRecord("req_x", "POST")
    tracing.start_request(record, "/v1/chat/completions", headers)
    failed = tracing.start_attempt(record, TARGET, 0)
    tracing.end_attempt(record, failed, "service_unavailable")
    served = tracing.start_attempt(record, TARGET, 1)
    assert upstream_traceparent(record) == (
        f"00-{served.trace_id:032x}-{served.span_id:016x}-{'01' if served.sampled else '00'}"
    )
    tracing.end_attempt(record, served, None)
    record.route, record.status = "/v1/chat/completions", 502
    record.model, record.provider, record.provider_kind = "openai/gpt-4o", "openai-eu", "openai"
    record.account_id, record.request_model, record.cache = "acct_x", "openai/gpt-4o", "miss"
    record.prompt_tokens, record.completion_tokens, record.cost_usd = 12, 4, 0.00002
    record.finish_reasons = ["stop", "length"]
    tracing.end_request(record)
    return record


def made_by_the_child(rows: list[tuple[Any, ...]], resource: Resource) -> list[ReadableSpan]:
    frame = msgspec.msgpack.encode(rows)
    return SpanMaker(resource).make(msgspec.msgpack.decode(frame))


def made_in_process(
    rows: list[tuple[Any, ...]], headers: dict[str, str], resource: Resource
) -> list[ReadableSpan]:
    """The same request traced the SDK's usual way: its tracer's spans, ended in process."""
    provider = TracerProvider(
        resource=resource,
        sampler=ParentBased(TraceIdRatioBased(1.0)),
        id_generator=FixedIds(),
        shutdown_on_exit=False,
    )
    collected = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(collected))
    tracer = provider.get_tracer("klawd-gateway")
    first, second, last = rows
    parent = TraceContextTextMapPropagator().extract(headers) if headers else None
    server = tracer.start_span("POST", context=parent, kind=SpanKind.SERVER, start_time=last[8])
    for row, error in ((first, "service_unavailable"), (second, None)):
        client = tracer.start_span(
            row[0],
            context=trace.set_span_in_context(server),
            kind=SpanKind.CLIENT,
            attributes={k: v for k, v in row[10].items() if k != "error.type"},
            start_time=row[8],
        )
        if error is not None:
            client.set_attribute("error.type", error)
            client.set_status(Status(StatusCode.ERROR, error))
        client.end(end_time=row[9])
    server.update_name("POST /v1/chat/completions")
    server.set_attributes(last[10])
    server.set_status(Status(StatusCode.ERROR, "HTTP 502"))
    server.end(end_time=last[9])
    return list(collected.get_finished_spans())


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01"},
        {
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-03",
            "tracestate": "vendor=abc",
        },
    ],
    ids=["root", "remote-parent", "remote-parent-with-tracestate"],
)
def test_the_childs_spans_encode_to_the_otlp_bytes_of_the_sdks_own_spans(
    traced: tuple[Tracing, list[tuple[Any, ...]]], headers: dict[str, str]
) -> None:
    tracing, rows = traced
    record = gateway_request(tracing, [(k.encode(), v.encode()) for k, v in headers.items()])
    assert len(rows) == 3  # two attempts, then the request
    resource = Resource.create({"service.name": SERVICE})

    made = made_by_the_child(rows, resource)
    expected = made_in_process(rows, headers, resource)

    assert encode_spans(made).SerializeToString(deterministic=True) == encode_spans(
        expected
    ).SerializeToString(deterministic=True)
    assert [s.context for s in made] == [s.context for s in expected]  # flags, trace state
    assert record.trace_id == f"{expected[-1].context.trace_id:032x}"  # type: ignore[union-attr]
    server = made[-1]
    assert server.attributes is not None
    assert server.attributes["gen_ai.response.finish_reasons"] == ("stop", "length")
    assert server.status.status_code is StatusCode.ERROR
    assert all(s.parent is not None and s.parent.span_id == server.context.span_id  # type: ignore[union-attr]
               for s in made[:2])  # fmt: skip


def test_an_unsampled_request_sends_no_row_but_passes_its_trace_id_on(
    traced: tuple[Tracing, list[tuple[Any, ...]]],
) -> None:
    tracing, rows = traced
    parent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-00"
    record = RequestRecord("req_y", "POST")
    tracing.start_request(record, "/v1/chat/completions", [(b"traceparent", parent)])
    span = tracing.start_attempt(record, TARGET, 0)
    sent = upstream_traceparent(record)
    tracing.end_attempt(record, span, None)
    tracing.end_request(record)
    assert rows == []
    assert record.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert sent == f"00-4bf92f3577b34da6a3ce929d0e0e4736-{span.span_id:016x}-00"


def test_a_child_that_does_not_read_makes_the_gateway_drop_and_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipe, "MAX_BUFFERED_BYTES", 256 * 1024)
    monkeypatch.setattr(pipe, "BATCH_SPANS", 64)
    spans = SpanPipe("http://127.0.0.1:9/v1/traces", "klawd-test")
    child = spans._child
    assert child is not None
    os.kill(child.pid, signal.SIGSTOP)  # the child reads nothing: the pipe (64 KiB) fills
    try:
        attributes = {"klawd.deployment": "x" * 200}
        row = ("POST /v1/chat/completions", bytes(16), 1, None, False, 0, None, 2, 1, 2)
        for _ in range(4000):  # ~1 MiB of rows: more than the pipe and the buffer hold
            spans.add((*row, attributes, None))
        assert spans.dropped_spans > 0
        assert len(spans._unsent) <= pipe.MAX_BUFFERED_BYTES
    finally:
        # the endpoint refuses: the child's exporter gives up on each batch; shutdown is bounded
        os.kill(child.pid, signal.SIGKILL)
        spans.shutdown()
    assert child.returncode is not None


def test_an_attribute_value_msgpack_has_no_form_for_goes_as_its_text() -> None:
    row = ("chat m", bytes(15) + b"\x01", 2, None, False, 0, None, 3, 1, 2)
    frame = pipe._encode([(*row, {"klawd.cost_usd": Decimal("0.5")}, None)])
    [span] = SpanMaker(Resource.create({})).make(msgspec.msgpack.decode(frame))
    assert span.attributes == {"klawd.cost_usd": "0.5"}


def test_a_frame_larger_than_the_pipe_reaches_the_receiver_with_no_span_ending_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # no timed flush in this test
    monkeypatch.setattr(pipe, "BATCH_SPANS", 10_000)  # no flush by count either: one frame
    receiver = OtlpReceiver()
    receiver.start()
    spans = SpanPipe(f"{receiver.origin}/v1/traces", "klawd-test")
    try:
        attributes = {"klawd.deployment": "x" * 200}
        row = ("POST /v1/chat/completions", bytes(15) + b"\x07", 1, None, False, 0, None, 2, 1, 2)
        for _ in range(600):  # ~160 KB in one frame: more than the pipe's 64 KiB at once
            spans.add((*row, attributes, None))
        spans.flush()  # the pipe takes the frame's start; its rest is offered again soon
        received = receiver.trace("00" * 15 + "07", 600)
        assert len(received) == 600
        assert spans.dropped_spans == 0
    finally:
        spans.shutdown()
        receiver.stop()


def test_attributes_over_the_sdks_count_limit_are_dropped_and_counted_as_the_tracer_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "3")
    attributes = {f"klawd.a{i}": i for i in range(5)}
    row = ("chat m", bytes(15) + b"\x01", 2, None, False, 0, None, 3, 1, 2, attributes, None)
    [made] = SpanMaker(Resource.create({})).make(msgspec.msgpack.decode(pipe._encode([row])))
    provider = TracerProvider(
        resource=Resource.create({}), id_generator=FixedIds(), shutdown_on_exit=False
    )
    collected = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(collected))
    span = provider.get_tracer("klawd-gateway").start_span(
        "chat m", kind=SpanKind.CLIENT, attributes=attributes, start_time=1
    )
    span.end(end_time=2)
    [expected] = collected.get_finished_spans()
    assert made.dropped_attributes == expected.dropped_attributes == 2
    assert dict(made.attributes or {}) == dict(expected.attributes or {})
    encoded = encode_spans([made]).resource_spans[0].scope_spans[0].spans[0]
    assert encoded.dropped_attributes_count == 2
