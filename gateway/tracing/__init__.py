"""OpenTelemetry traces of the request path, on when `[telemetry] otlp_endpoint` is set.

Entered at one place each: the outermost middleware opens the request's server span (honouring
an incoming W3C `traceparent`) and ends it when the response has ended, with the attributes the
request's `RequestRecord` gathered (gateway/requestlog.py); the retry loop opens a client span
per upstream attempt (gateway/routing/retry.py), and the providers' sender passes that span's
`traceparent` upstream (gateway/providers/base.py).

The SDK's span objects themselves are made from them in an exporter child process
(gateway/tracing/otel.py, pipe.py, exporter_child.py): the request path keeps plain values.
Off (the default), `build_tracing` returns None, nothing of the OpenTelemetry SDK is imported,
and each of those places costs one `is None` test. docs/decisions/0019-cache-and-traces.md says
what a span holds (and what it never holds: no prompt, no completion, no key).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.requestlog import RequestRecord, current_request
from gateway.settings import TelemetrySettings

if TYPE_CHECKING:
    from gateway.tracing.otel import Tracing

__all__ = [
    "Tracing",
    "build_tracing",
    "note_finish_reasons",
    "traced_headers",
    "traceparent",
    "upstream_traceparent",
]


def build_tracing(settings: TelemetrySettings) -> Tracing | None:
    if not settings.otlp_endpoint:
        return None
    from gateway.tracing.otel import Tracing  # the SDK is imported only when traces are on

    return Tracing(settings)


def traceparent(trace_id: int, span_id: int, sampled: bool) -> str:
    """A W3C trace context header value (version 00)."""
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def upstream_traceparent(record: RequestRecord) -> str | None:
    """The `traceparent` for the upstream call being made: the attempt's client span, else the
    request's server span (an unsampled span still passes its trace id on, flag 00)."""
    span = record.upstream_span or record.span
    if span is None:
        return None
    traceparent: str = span.traceparent  # gateway._core.ClientSpan / ServerSpan
    return traceparent


def traced_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    """The upstream call's headers with the current attempt's W3C trace context (traces on): a
    new dict (the provider's own is shared by its calls), or `headers` outside a request."""
    record = current_request.get()
    if record is None:
        return headers
    span = record.upstream_span or record.span  # upstream_traceparent(record), inline
    if span is None:
        return headers
    return {**headers, "traceparent": span.traceparent}


def note_finish_reasons(reasons: list[Any]) -> None:
    """gen_ai.response.finish_reasons of the request's trace (OpenAI vocabulary): the list as
    the provider read it (a new list, never changed after); the exporter child drops the Nones
    and makes the rest text (gateway/tracing/rows.server_span)."""
    record = current_request.get()
    if record is not None:
        record.finish_reasons = reasons
