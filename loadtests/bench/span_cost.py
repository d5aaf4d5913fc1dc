"""Where the CPU of a traced request goes: the OpenTelemetry SDK's span work on the request path
(the gateway's two spans, started, filled and ended as the gateway does), the rows the gateway's
span processor makes of them for the exporter child (gateway/tracing/pipe.py), and what the child
does (rebuild the spans, then the official OTLP exporter's protobuf encoding). No network: spans
are collected in memory, then turned into rows and encoded.

    .venv/bin/python -m loadtests.bench.span_cost [--requests 3000]
"""

from __future__ import annotations

import argparse
import time

import msgspec
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.requestlog import RequestRecord
from gateway.routing.catalog import CatalogEntry
from gateway.settings import ModelSettings, ProviderSettings, TelemetrySettings
from gateway.tracing.exporter_child import span_from_row
from gateway.tracing.otel import Tracing
from gateway.tracing.pipe import BATCH_SPANS as BATCH
from gateway.tracing.pipe import span_row

TARGET = CatalogEntry(
    ModelSettings(id="openai/gpt-4o", provider="openai", upstream_model="gpt-4o"),
    ProviderSettings(kind="openai", base_url="http://127.0.0.1:9/v1"),
    None,
)


def one_request(tracing: Tracing) -> None:
    record = RequestRecord("req_bench", "POST")
    tracing.start_request(record, "/v1/chat/completions", [])
    span = tracing.start_attempt(record, TARGET, 0)
    tracing.end_attempt(record, span, None)
    record.route, record.status = "/v1/chat/completions", 200
    record.model, record.provider, record.provider_kind = "openai/gpt-4o", "openai", "openai"
    record.account_id, record.request_model, record.finish_reasons = (
        "acct_x",
        "openai/gpt-4o",
        ["stop"],
    )
    record.prompt_tokens, record.completion_tokens, record.cost_usd = 12, 4, 0.00002
    tracing.end_request(record)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    if not 100 <= args.requests <= 100_000:
        parser.error("--requests: 100..100000")
    # an endpoint nothing listens on: the pipe to the exporter child is closed (and the child
    # ends) before anything is sent; spans are collected in memory instead
    tracing = Tracing(TelemetrySettings(otlp_endpoint="http://127.0.0.1:9", sample_ratio=1.0))
    tracing.exporter.shutdown()
    tracing.provider._active_span_processor._span_processors = ()
    collected = InMemorySpanExporter()
    tracing.provider.add_span_processor(SimpleSpanProcessor(collected))
    for _ in range(200):  # warm-up
        one_request(tracing)
    collected.clear()
    started = time.process_time()
    for _ in range(args.requests):
        one_request(tracing)
    span_us = (time.process_time() - started) / args.requests * 1e6
    spans = collected.get_finished_spans()
    started = time.process_time()
    frames = [
        msgspec.msgpack.encode([span_row(s, s.get_span_context()) for s in spans[i : i + BATCH]])
        for i in range(0, len(spans), BATCH)
    ]
    row_us = (time.process_time() - started) / args.requests * 1e6
    resource = spans[0].resource
    started = time.process_time()
    rebuilt = [
        [span_from_row(row, resource) for row in msgspec.msgpack.decode(frame)] for frame in frames
    ]
    rebuild_us = (time.process_time() - started) / args.requests * 1e6
    started = time.process_time()
    for batch in rebuilt:
        encode_spans(batch).SerializeToString()
    encode_us = (time.process_time() - started) / args.requests * 1e6
    print(f"spans per request: {len(spans) / args.requests:.0f}")
    print(f"SDK span work on the request path: {span_us:.0f} us CPU per request")
    print(f"rows and msgpack frames for the exporter child: {row_us:.0f} us CPU per request")
    print(f"exporter child, spans rebuilt from rows: {rebuild_us:.0f} us CPU per request")
    print(f"exporter child, OTLP protobuf encoding: {encode_us:.0f} us CPU per request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
