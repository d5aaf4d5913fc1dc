"""The span pipe (gateway/tracing/otel.py, pipe.py, exporter_child.py): the spans the exporter
child makes from the gateway's rows are the spans the SDK's tracer makes in process, to the byte
of OTLP; and a child that falls behind makes the gateway drop and count, never wait."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import threading
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

from gateway._core import SpanRecorder
from gateway.requestlog import RequestRecord
from gateway.routing.catalog import CatalogEntry
from gateway.settings import ModelSettings, ProviderSettings, TelemetrySettings
from gateway.tracing import otel, pipe, rows, upstream_traceparent
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


class RowIds(IdGenerator):
    """The ids the gateway chose (read back from its rows), in the order the SDK's tracer asks
    for them: the reference spans get the same ids as the gateway's."""

    def __init__(self, trace_id: bytes, span_ids: list[bytes]) -> None:
        self._trace_id = int.from_bytes(trace_id, "big")
        self._ids: Iterator[int] = iter([int.from_bytes(i, "big") for i in span_ids])

    def generate_span_id(self) -> int:
        return next(self._ids)

    def generate_trace_id(self) -> int:
        return self._trace_id

    def is_trace_id_random(self) -> bool:
        return True


def row(kind: SpanKind, **values: Any) -> tuple[Any, ...]:
    """A row of gateway/tracing/rows.py from its fields by name (every field named)."""
    fields = (*rows.HEAD, *(rows.SERVER if kind is SpanKind.SERVER else rows.CLIENT))
    values["kind"] = kind.value
    assert set(values) == set(fields)
    return tuple(values[name] for name in fields)


HEAD: dict[str, Any] = {
    "trace_id": bytes(15) + b"\x01",
    "span_id": bytes(7) + b"\x02",
    "parent_id": None,
    "parent_remote": False,
    "parent_flags": 0,
    "state": None,
    "start_ns": 1,
    "end_ns": 2,
}
SERVER_VALUES: dict[str, Any] = {
    "method": "POST",
    "route": "/v1/chat/completions",
    "status": 200,
    "operation": "chat",
    "request_model": "klawd/standard",
    "model": "openai/gpt-4o",
    "provider_kind": "openai",
    "provider": "openai-eu",
    "account_id": "acct_x",
    "cache": None,
    "prompt_tokens": 12,
    "completion_tokens": 4,
    "cost_usd": 0.00002,
    "finish_reasons": ["stop"],
}
CLIENT_VALUES: dict[str, Any] = {
    "operation": "chat",
    "provider_kind": "openai",
    "upstream_model": "gpt-4o",
    "model_id": "openai/gpt-4o",
    "deployment": "openai-eu",
    "attempt": 0,
    "error": None,
}


class Kept(list[Any]):
    """The rows a Tracing recorded, read back from its recorder's frame (what the child reads;
    rows that took msgspec's way, SpanPipe.add, are in it too, in order of arrival)."""

    def __init__(self, tracing: Tracing) -> None:
        super().__init__()
        self.tracing = tracing
        self.frames: list[bytes] = []

    def read(self) -> Kept:
        taken = self.tracing.recorder.take()
        if taken is not None:
            self.frames.append(taken[1])
            self.extend(msgspec.msgpack.decode(taken[1]))
        return self


@pytest.fixture
def traced() -> Iterator[tuple[Tracing, Kept]]:
    """A Tracing whose rows are read here from its recorder's frame (its child is stopped)."""
    tracing = Tracing(TelemetrySettings(otlp_endpoint="http://127.0.0.1:9", sample_ratio=1.0))
    tracing.pipe.shutdown()
    yield tracing, Kept(tracing)


def gateway_request(tracing: Tracing, headers: list[tuple[bytes, bytes]]) -> RequestRecord:
    """A request as the gateway's seams see it: a failed attempt, then a served one."""
    record = RequestRecord("req_x", "POST")
    tracing.start_request(record, "/v1/chat/completions", headers)
    failed = tracing.start_attempt(record, TARGET, 0)
    tracing.end_attempt(record, failed, "service_unavailable")
    served = tracing.start_attempt(record, TARGET, 1)
    assert upstream_traceparent(record) == (
        f"00-{served.trace_id.hex()}-{served.span_id.hex()}-{'01' if served.sampled else '00'}"
    )
    tracing.end_attempt(record, served, None)
    record.route, record.status = "/v1/chat/completions", 502
    record.model, record.provider, record.provider_kind = "openai/gpt-4o", "openai-eu", "openai"
    record.account_id, record.request_model, record.cache = "acct_x", "openai/gpt-4o", "miss"
    record.prompt_tokens, record.completion_tokens, record.cost_usd = 12, 4, 0.00002
    record.finish_reasons = ["stop", None, "length"]  # as the provider read them
    tracing.end_request(record)
    return record


def made_by_the_child(kept: Kept, resource: Resource) -> list[ReadableSpan]:
    """The spans the child makes of the frames the recorder wrote."""
    return [span for frame in kept.frames for span in made_of_frame(frame, resource)]


def made_of_frame(frame: bytes, resource: Resource) -> list[ReadableSpan]:
    return SpanMaker(resource).make(msgspec.msgpack.decode(frame))


def made_in_process(
    made: list[Any], headers: dict[str, str], resource: Resource
) -> list[ReadableSpan]:
    """The same request traced the SDK's usual way: its tracer's spans, ended in process, with
    the attributes written out here (not read from the rows) and the gateway's ids."""
    first, second, last = made
    provider = TracerProvider(
        resource=resource,
        sampler=ParentBased(TraceIdRatioBased(1.0)),
        id_generator=RowIds(last[1], [last[2], first[2], second[2]]),
        shutdown_on_exit=False,
    )
    collected = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(collected))
    tracer = provider.get_tracer("klawd-gateway")
    parent = TraceContextTextMapPropagator().extract(headers) if headers else None
    server = tracer.start_span("POST", context=parent, kind=SpanKind.SERVER, start_time=last[7])
    for attempt, (made_row, error) in enumerate(((first, "service_unavailable"), (second, None))):
        client = tracer.start_span(
            "chat gpt-4o",
            context=trace.set_span_in_context(server),
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o",
                "klawd.deployment": "openai-eu",
                "klawd.attempt": attempt,
            },
            start_time=made_row[7],
        )
        if error is not None:
            client.set_attribute("error.type", error)
            client.set_status(Status(StatusCode.ERROR, error))
        client.end(end_time=made_row[8])
    server.update_name("POST /v1/chat/completions")
    server.set_attributes(
        {
            "http.route": "/v1/chat/completions",
            "http.response.status_code": 502,
            "error.type": "502",
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "openai/gpt-4o",
            "gen_ai.response.model": "openai/gpt-4o",
            "gen_ai.provider.name": "openai",
            "klawd.deployment": "openai-eu",
            "klawd.account_id": "acct_x",
            "klawd.cache": "miss",
            "gen_ai.usage.input_tokens": 12,
            "gen_ai.usage.output_tokens": 4,
            "klawd.cost_usd": 0.00002,
            "gen_ai.response.finish_reasons": ["stop", "length"],
        }
    )
    server.set_status(Status(StatusCode.ERROR, "HTTP 502"))
    server.end(end_time=last[8])
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
    traced: tuple[Tracing, Kept], headers: dict[str, str]
) -> None:
    tracing, kept = traced
    record = gateway_request(tracing, [(k.encode(), v.encode()) for k, v in headers.items()])
    kept.read()
    assert len(kept) == 3  # two attempts, then the request
    resource = Resource.create({"service.name": SERVICE})

    made = made_by_the_child(kept, resource)
    expected = made_in_process(kept, headers, resource)

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
    traced: tuple[Tracing, Kept],
) -> None:
    tracing, kept = traced
    parent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-00"
    record = RequestRecord("req_y", "POST")
    tracing.start_request(record, "/v1/chat/completions", [(b"traceparent", parent)])
    span = tracing.start_attempt(record, TARGET, 0)
    sent = upstream_traceparent(record)
    tracing.end_attempt(record, span, None)
    tracing.end_request(record)
    assert kept.read() == [] and len(tracing.recorder) == 0
    assert record.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert sent == f"00-4bf92f3577b34da6a3ce929d0e0e4736-{span.span_id.hex()}-00"


REFUSED = "http://127.0.0.1:9/v1/traces"  # nothing listens on port 9 (discard) on loopback


def stopped_child(spans: SpanPipe) -> subprocess.Popen[bytes]:
    """The pipe's exporter child, stopped: it reads nothing, so the pipe (64 KiB) fills."""
    child = spans._child
    assert child is not None
    os.kill(child.pid, signal.SIGSTOP)
    return child


def wide_row(account_chars: int) -> tuple[Any, ...]:
    """A server span's row made wide by an account id of `account_chars` characters."""
    return row(SpanKind.SERVER, **HEAD, **(SERVER_VALUES | {"account_id": "x" * account_chars}))


def test_a_child_that_does_not_read_makes_the_gateway_drop_and_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipe, "MAX_BUFFERED_BYTES", 256 * 1024)
    monkeypatch.setattr(pipe, "BATCH_SPANS", 64)
    spans = SpanPipe(REFUSED, "klawd-test")
    child = stopped_child(spans)
    try:
        wide = wide_row(200)
        for _ in range(4000):  # ~1 MiB of rows: more than the pipe and the buffer hold
            spans.add(wide)
        assert spans.dropped_spans > 0
        assert len(spans._unsent) <= pipe.MAX_BUFFERED_BYTES
    finally:
        # the endpoint refuses: the child's exporter gives up on each batch; shutdown is bounded
        os.kill(child.pid, signal.SIGKILL)
        spans.shutdown()
    assert child.returncode is not None


def test_an_attribute_value_msgpack_has_no_form_for_goes_as_its_text() -> None:
    made = row(SpanKind.SERVER, **HEAD, **(SERVER_VALUES | {"cost_usd": Decimal("0.5")}))
    frame = pipe._encode([made])
    [span] = SpanMaker(Resource.create({})).make(msgspec.msgpack.decode(frame))
    assert span.attributes is not None
    assert span.attributes["klawd.cost_usd"] == "0.5"


def test_a_frame_larger_than_the_pipe_reaches_the_receiver_with_no_span_ending_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # no timed flush in this test
    monkeypatch.setattr(pipe, "BATCH_SPANS", 10_000)  # no flush by count either: one frame
    receiver = OtlpReceiver()
    receiver.start()
    spans = SpanPipe(f"{receiver.origin}/v1/traces", "klawd-test")
    try:
        values = SERVER_VALUES | {"account_id": "x" * 200}
        wide = row(SpanKind.SERVER, **(HEAD | {"trace_id": bytes(15) + b"\x07"}), **values)
        for _ in range(600):  # ~160 KB in one frame: more than the pipe's 64 KiB at once
            spans.add(wide)
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
    made_row = row(SpanKind.CLIENT, **HEAD, **(CLIENT_VALUES | {"error": "bad_gateway"}))
    [made] = SpanMaker(Resource.create({})).make(msgspec.msgpack.decode(pipe._encode([made_row])))
    provider = TracerProvider(
        resource=Resource.create({}),
        id_generator=RowIds(HEAD["trace_id"], [HEAD["span_id"]]),
        shutdown_on_exit=False,
    )
    collected = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(collected))
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "klawd.deployment": "openai-eu",
        "klawd.attempt": 0,
        "error.type": "bad_gateway",
    }
    span = provider.get_tracer("klawd-gateway").start_span(
        "chat gpt-4o", kind=SpanKind.CLIENT, attributes=attributes, start_time=1
    )
    span.set_status(Status(StatusCode.ERROR, "bad_gateway"))
    span.end(end_time=2)
    [expected] = collected.get_finished_spans()
    assert made.dropped_attributes == expected.dropped_attributes == 3
    assert dict(made.attributes or {}) == dict(expected.attributes or {})
    encoded = encode_spans([made]).resource_spans[0].scope_spans[0].spans[0]
    assert encoded.dropped_attributes_count == 3
    assert encode_spans([made]).SerializeToString(deterministic=True) == encode_spans(
        [expected]
    ).SerializeToString(deterministic=True)


def test_a_cache_hit_or_an_unrouted_request_has_only_the_attributes_it_knows() -> None:
    unrouted = {name: None for name in rows.SERVER} | {
        "method": "GET",
        "route": "/v1/nothing",
        "status": 404,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cost_usd": 0.0,
    }
    hit = SERVER_VALUES | {"cache": "hit", "finish_reasons": [None]}
    made = [row(SpanKind.SERVER, **HEAD, **unrouted), row(SpanKind.SERVER, **HEAD, **hit)]
    first, second = SpanMaker(Resource.create({})).make(msgspec.msgpack.decode(pipe._encode(made)))
    assert first.name == "GET /v1/nothing"
    assert dict(first.attributes or {}) == {
        "http.route": "/v1/nothing",
        "http.response.status_code": 404,
        "error.type": "404",
    }
    assert first.status.status_code is StatusCode.UNSET  # a 4xx is the client's error
    assert second.attributes is not None
    assert second.attributes["klawd.cache"] == "hit"
    assert "gen_ai.response.finish_reasons" not in second.attributes  # no reason but None


def test_a_client_span_without_an_upstream_model_is_named_after_the_catalog_model() -> None:
    values = CLIENT_VALUES | {
        "upstream_model": None,
        "model_id": "local/llama-3.1",
        "provider_kind": "ollama",  # no well-known name: the kind itself
        "operation": None,
        "error": "TimeoutError",
    }
    made = row(SpanKind.CLIENT, **(HEAD | {"parent_id": bytes(7) + b"\x09"}), **values)
    [span] = SpanMaker(Resource.create({})).make(msgspec.msgpack.decode(pipe._encode([made])))
    assert span.name == "chat llama-3.1"
    assert span.attributes is not None
    assert span.attributes["gen_ai.request.model"] == "llama-3.1"
    assert span.attributes["gen_ai.provider.name"] == "ollama"
    assert span.attributes["error.type"] == "TimeoutError"
    assert span.status.status_code is StatusCode.ERROR
    assert span.parent is not None and span.parent.span_id == 9


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 1.0])
def test_a_root_is_sampled_exactly_when_the_sdks_sampler_samples_it(ratio: float) -> None:
    tracing = Tracing(TelemetrySettings(otlp_endpoint="http://127.0.0.1:9", sample_ratio=ratio))
    tracing.pipe.shutdown()
    sdk = ParentBased(TraceIdRatioBased(ratio))
    for _ in range(400):
        record = RequestRecord("req_z", "POST")
        tracing.start_request(record, "/v1/chat/completions", [(b"host", b"x")])
        trace_id = int.from_bytes(record.span.trace_id, "big")
        decision = sdk.should_sample(None, trace_id, "POST", SpanKind.SERVER)
        assert record.span.sampled == decision.decision.is_sampled()
        assert record.trace_id == f"{trace_id:032x}"


def test_ids_are_random_never_zero_and_a_buffer_with_a_zero_id_is_not_used() -> None:
    size = 32 * 128  # what the recorder reads at a time: 128 requests' ids
    reads = [bytes(size), b"\x01" * size]  # the first has all-zero ids: read again
    asked: list[int] = []

    def urandom(n: int) -> bytes:
        asked.append(n)
        return reads.pop(0)

    recorder = SpanRecorder(urandom, 1 << 64, 512)
    assert recorder.ids() == b"\x01" * 32 and reads == [] and asked == [size, size]
    fresh = SpanRecorder(os.urandom, 1 << 64, 512)
    ids = {fresh.ids() for _ in range(3 * 128)}  # three buffers
    assert len(ids) == 3 * 128
    spans = [fresh.start([(b"host", b"x")]) for _ in range(200)]
    assert len({s.trace_id for s in spans if s is not None}) == 200


def test_a_row_msgpack_cannot_carry_is_dropped_and_counted_not_its_frame() -> None:
    spans = SpanPipe(REFUSED, "klawd-test")
    spans.shutdown()
    good = row(SpanKind.SERVER, **HEAD, **SERVER_VALUES)
    bad = row(SpanKind.SERVER, **HEAD, **(SERVER_VALUES | {"prompt_tokens": 2**70}))
    for made in (good, bad, good):
        spans.add(made)
    taken = spans.recorder.take()
    assert taken is not None and taken[0] == 2
    assert len(msgspec.msgpack.decode(taken[1])) == 2
    assert spans.dropped_spans == 1
    spans.add(bad)
    assert spans.recorder.take() is None


def test_rows_recorded_after_a_frame_is_taken_go_in_the_next_frame() -> None:
    spans = SpanPipe(REFUSED, "klawd-test")
    spans.shutdown()
    first = row(SpanKind.SERVER, **HEAD, **SERVER_VALUES)
    spans.add(first)
    frame = spans.recorder.take()
    spans.add(first)  # another span ends meanwhile
    assert frame is not None and len(msgspec.msgpack.decode(frame[1])) == 1
    assert len(spans.recorder) == 1


# -- the Rust recorder (gateway._core.SpanRecorder) against msgspec's rows ------------------------


def recorded_request(
    tracing: Tracing, values: dict[str, Any], attempt_error: Any = None
) -> RequestRecord:
    """One request with one attempt, its record holding `values` (RequestRecord's names)."""
    record = RequestRecord("req_r", "POST")
    tracing.start_request(record, "/v1/chat/completions", [(b"host", b"x")])
    span = tracing.start_attempt(record, TARGET, 0)
    tracing.end_attempt(record, span, attempt_error)
    record.route, record.status = "/v1/chat/completions", 200
    for name, value in values.items():
        setattr(record, name, value)
    tracing.end_request(record)
    return record


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"model": "openai/gpt-4o", "provider_kind": "openai", "provider": "openai-eu",
         "account_id": "acct_" + "x" * 40, "cache": "miss", "request_model": "klawd/standard",
         "prompt_tokens": 2**40, "completion_tokens": 70_000, "cost_usd": 1.25e-7,
         "finish_reasons": ["stop", None, "length"]},
        {"route": "/v1/é" + "x" * 300, "status": 503, "account_id": "ü" * 40,
         "prompt_tokens": -5, "completion_tokens": 2**64 - 1, "cost_usd": 0,
         "finish_reasons": [1, 2.5, True, ("a", b"b"), {"k": [None]}]},
    ],
    ids=["unrouted", "served", "odd-values"],
)  # fmt: skip
def test_the_recorders_frame_is_msgspecs_encoding_of_the_same_rows_to_the_byte(
    traced: tuple[Tracing, Kept], values: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    tracing, kept = traced
    record = recorded_request(tracing, values, attempt_error="bad_gateway")
    frame = kept.read().frames[0]
    client, server = kept
    assert (client[0], server[0]) == (SpanKind.CLIENT.value, SpanKind.SERVER.value)
    # the same rows built in Python (the recorder's own fallback), ended when the recorder's were
    ends = iter([client[8], server[8]])
    monkeypatch.setattr(otel.time, "time_ns", lambda: next(ends))
    span = tracing.recorder.client(record.span, TARGET, 0)
    client_span = otel.client_row(span, record, "bad_gateway")
    expected = [
        (*client_span[:2], *client[2:3], *client_span[3:7], client[7], *client_span[8:]),
        otel.server_row(record.span, record),
    ]
    assert pipe._encode(expected) == frame


def test_a_value_the_recorder_has_no_form_for_takes_msgspecs_way(
    traced: tuple[Tracing, Kept],
) -> None:
    tracing, kept = traced
    recorded_request(tracing, {"model": "openai/gpt-4o", "cost_usd": Decimal("0.5")})
    recorded_request(tracing, {"model": "openai/gpt-4o", "prompt_tokens": 2**70})
    kept.read()
    assert [r[0] for r in kept] == [2, 1, 2]  # the second request's server span is dropped
    assert tracing.pipe.dropped_spans == 1
    server = made_of_frame(kept.frames[0], Resource.create({}))[1]
    assert server.attributes is not None
    assert server.attributes["klawd.cost_usd"] == "0.5"  # as the SDK casts it


def test_the_recorder_asks_for_a_frame_when_full_and_after_a_fork() -> None:
    recorder = SpanRecorder(os.urandom, 1 << 64, 3)
    encoded = pipe._encode(row(SpanKind.SERVER, **HEAD, **SERVER_VALUES))
    assert [recorder.push(encoded) for _ in range(3)] == [False, False, True]
    ids = recorder.ids()
    recorder.forget()  # as after a fork: the parent's rows and ids are not this process's
    assert len(recorder) == 0 and recorder.take() is None
    assert recorder.push(encoded) is True  # the first row after it: start the child
    assert recorder.push(encoded) is False
    assert recorder.ids() != ids


def _descriptors_below(number: int) -> list[int]:
    """Descriptors held open until every one below `number` is taken (the next one opened is
    numbered `number` or more): a worker holding that many connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < number + 64:
        if hard != resource.RLIM_INFINITY and hard < number + 64:
            pytest.skip(f"the open files limit ({hard}) is below {number + 64}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (number + 64, hard))
    held = [os.open(os.devnull, os.O_RDONLY)]
    while held[-1] < number - 1:
        held.append(os.open(os.devnull, os.O_RDONLY))
    return held


@pytest.mark.parametrize("past_select", [False, True], ids=["low", "past-select-s-limit"])
def test_a_child_that_stops_reading_does_not_hold_the_shutdown(
    monkeypatch: pytest.MonkeyPatch, past_select: bool
) -> None:
    """The rows left at shutdown were written to the child's pipe in blocking mode: a child
    that stopped reading (stopped, stuck) held the worker's shutdown for ever (here: the
    thread still running after 30 s). They are now written within CHILD_EXIT_TIMEOUT_S, then
    the child is killed. Also when the pipe is numbered past 1023 (a worker holding a
    thousand connections when its child starts: a forked worker's first span), which
    `select.select` refuses with a ValueError that ended the shutdown there, the child
    left running."""
    monkeypatch.setattr(pipe, "CHILD_EXIT_TIMEOUT_S", 0.2)
    monkeypatch.setattr(pipe, "BATCH_SPANS", 64)
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = _descriptors_below(1024) if past_select else []
    try:
        spans = SpanPipe(REFUSED, "klawd-test")
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)
    shutting = threading.Thread(target=spans.shutdown)
    child = stopped_child(spans)
    try:
        assert child.stdin is not None
        assert (child.stdin.fileno() >= 1024) == past_select
        wide = wide_row(200)
        for _ in range(1000):  # ~250 KiB of rows: more than the pipe holds
            spans.add(wide)
        assert spans._unsent, "the pipe took every row: nothing would be left to write"
        shutting.start()
        shutting.join(30)
        assert not shutting.is_alive(), "the shutdown still waits for a child that reads nothing"
        assert child.returncode is not None
    finally:
        if child.returncode is None:
            os.kill(child.pid, signal.SIGKILL)
        if shutting.is_alive():
            shutting.join()


def test_a_cut_shutdown_counts_the_spans_not_written_to_the_child(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the shutdown's cut line says (gateway/app.py): the spans whose frame the child has
    not had whole (it drops a partial last frame), not only bytes. Here a frame per span, each
    larger than the pipe: the first is partly written, the two others not at all."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # no timed flush in this test
    monkeypatch.setattr(pipe, "CHILD_EXIT_TIMEOUT_S", 0.2)
    monkeypatch.setattr(pipe, "BATCH_SPANS", 1)
    spans = SpanPipe(REFUSED, "klawd-test")
    child = stopped_child(spans)
    try:
        wide = wide_row(1_000_000)
        for _ in range(3):
            spans.add(wide)
        spans.shutdown()  # cut after 0.2 s, the child killed
        assert 2_000_000 < spans.unwritten_bytes < 3_000_000
        assert spans.unwritten_spans == 3
    finally:
        if child.returncode is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
