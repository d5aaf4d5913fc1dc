"""Where the CPU of a traced request goes: the gateway's span bookkeeping on the request path (the
two spans of a request, started, filled and ended as the gateway's seams do, with the SDK's
sampler and id generator: gateway/tracing/otel.py), the msgpack frames of their rows for the
exporter child (gateway/tracing/pipe.py), and what the child does: make them spans with the
SDK's tracer (gateway/tracing/exporter_child.py), then the official OTLP exporter's protobuf
encoding. No network and no child: rows are kept in memory, then framed, made and encoded.

    .venv/bin/python -m loadtests.bench.span_cost [--requests 3000]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import msgspec
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource

from gateway.requestlog import RequestRecord
from gateway.routing.catalog import CatalogEntry
from gateway.settings import ModelSettings, ProviderSettings, TelemetrySettings
from gateway.tracing.exporter_child import SpanMaker
from gateway.tracing.otel import Tracing
from gateway.tracing.pipe import BATCH_SPANS as BATCH

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
    # ends) before anything is sent; rows are kept in memory instead
    tracing = Tracing(TelemetrySettings(otlp_endpoint="http://127.0.0.1:9", sample_ratio=1.0))
    tracing.pipe.shutdown()
    rows: list[tuple[Any, ...]] = []
    tracing.pipe.add = rows.append  # type: ignore[method-assign]
    for _ in range(200):  # warm-up
        one_request(tracing)
    rows.clear()
    started = time.process_time()
    for _ in range(args.requests):
        one_request(tracing)
    span_us = (time.process_time() - started) / args.requests * 1e6
    started = time.process_time()
    frames = [msgspec.msgpack.encode(rows[i : i + BATCH]) for i in range(0, len(rows), BATCH)]
    frame_us = (time.process_time() - started) / args.requests * 1e6
    maker = SpanMaker(Resource.create({"service.name": "klawd-gateway"}))
    started = time.process_time()
    made = [maker.make(msgspec.msgpack.decode(frame)) for frame in frames]
    make_us = (time.process_time() - started) / args.requests * 1e6
    started = time.process_time()
    for batch in made:
        encode_spans(batch).SerializeToString()
    encode_us = (time.process_time() - started) / args.requests * 1e6
    print(f"spans per request: {len(rows) / args.requests:.0f}")
    print(f"gateway, span bookkeeping on the request path: {span_us:.0f} us CPU per request")
    print(f"gateway, msgpack frames for the exporter child: {frame_us:.0f} us CPU per request")
    print(f"exporter child, spans made by the SDK's tracer: {make_us:.0f} us CPU per request")
    print(f"exporter child, OTLP protobuf encoding: {encode_us:.0f} us CPU per request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
