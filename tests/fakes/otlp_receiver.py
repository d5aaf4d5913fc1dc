"""A real OTLP/HTTP trace receiver on loopback: POST /v1/traces, protobuf decoded with the
official `opentelemetry-proto` messages (what a collector does), spans kept flat for tests."""

from __future__ import annotations

import gzip
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.fakes.server import ThreadedServer
from tests.live_bound import running_deadline


def any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


@dataclass
class ReceivedSpan:
    name: str
    kind: int  # 2 server, 3 client (opentelemetry.proto.trace.v1.Span.SpanKind)
    trace_id: str
    span_id: str
    parent_span_id: str
    status_code: int  # 0 unset, 1 ok, 2 error
    attributes: dict[str, Any]
    resource: dict[str, Any] = field(default_factory=dict)


SERVER, CLIENT = 2, 3
ERROR = 2


class OtlpReceiver(ThreadedServer):
    def __init__(self) -> None:
        super().__init__()
        self.spans: list[ReceivedSpan] = []
        self.raw: list[bytes] = []  # every export body as received (decompressed)

    def setup(self, app: web.Application) -> None:
        app.router.add_post("/v1/traces", self._traces)

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        self.raw.append(body)
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        for resource_spans in export.resource_spans:
            resource = {a.key: any_value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            status_code=span.status.code,
                            attributes={a.key: any_value(a.value) for a in span.attributes},
                            resource=resource,
                        )
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def trace(self, trace_id: str, spans: int, timeout_s: float = 15) -> list[ReceivedSpan]:
        """The spans of one trace once at least `spans` have arrived (bounded wait)."""
        passed = running_deadline(timeout_s)
        while not passed():
            found = [s for s in list(self.spans) if s.trace_id == trace_id]
            if len(found) >= spans:
                return found
            time.sleep(0.05)
        raise AssertionError(f"trace {trace_id}: fewer than {spans} spans arrived")
