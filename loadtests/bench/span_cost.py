"""Where the CPU of a traced request goes: the OpenTelemetry SDK's span work on the request path
(the gateway's two spans, started, filled and ended as the gateway does), and the official OTLP
exporter's protobuf encoding of those spans (done by the batch worker, off the event loop but on
the same interpreter). No network: spans are collected in memory, then encoded.

    .venv/bin/python -m loadtests.bench.span_cost [--requests 3000]
"""

from __future__ import annotations

import argparse
import time

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.requestlog import RequestRecord
from gateway.routing.catalog import CatalogEntry
from gateway.settings import ModelSettings, ProviderSettings, TelemetrySettings
from gateway.tracing.otel import Tracing

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
    # an endpoint nothing listens on: the batch processor is replaced before anything is sent
    tracing = Tracing(TelemetrySettings(otlp_endpoint="http://127.0.0.1:9", sample_ratio=1.0))
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
    for index in range(0, len(spans), 512):  # the batch processor's batch size
        encode_spans(spans[index : index + 512]).SerializeToString()
    encode_us = (time.process_time() - started) / args.requests * 1e6
    print(f"spans per request: {len(spans) / args.requests:.0f}")
    print(f"SDK span work on the request path: {span_us:.0f} us CPU per request")
    print(f"OTLP protobuf encoding (batch worker): {encode_us:.0f} us CPU per request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
