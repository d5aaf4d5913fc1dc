"""The gateway's side of its traces, behind the three tracing seams (see gateway/tracing/__init__).

The request path decides each span with the OpenTelemetry SDK's own parts: the parent-based
trace-id-ratio sampler (`sample_ratio`; for a request without trace context, its root sampler's
decision made from its own bound without the call) and the W3C trace context propagator; ids are
random bytes (`IdSlots`). What a span then gathers (ids, times, the request's raw values) is
kept in plain values (`OpenSpan`, `ClientSpan`), and an ended, sampled span goes as one row
(gateway/tracing/rows.py) down a pipe to the exporter child (gateway/tracing/pipe.py), where its
name and attributes are built and it is made the SDK's span object (`ReadableSpan`, with the
SDK's attribute checks and limits: exporter_child.SpanMaker) and the official OTLP/HTTP
exporter sends it. The SDK's span objects cost ~65 µs of CPU each in a live worker and nothing
on the request path reads them, so they are made in the child, off the event loop and out of the
gateway's GIL (docs/decisions/0019-cache-and-traces.md gives the measurements). A sampled incoming
`traceparent` is followed; an unsampled request still has a trace id (in its log line and the
`traceparent` sent upstream).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Mapping

from opentelemetry.sdk.trace.sampling import Decision, ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, TraceFlags, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.requestlog import RequestRecord
from gateway.routing.catalog import CatalogEntry
from gateway.settings import TelemetrySettings
from gateway.tracing.pipe import SpanPipe
from gateway.tracing.rows import provider_name

__all__ = ["OPERATIONS", "ClientSpan", "IdSlots", "OpenSpan", "Tracing", "provider_name"]

# gen_ai.operation.name of the API routes (OpenTelemetry GenAI semantic conventions).
OPERATIONS: Mapping[str, str] = {
    "/v1/chat/completions": "chat",
    "/v1/messages": "chat",
    "/v1/responses": "chat",
    "/v1/embeddings": "embeddings",
}
_SAMPLED, _RANDOM = int(TraceFlags.SAMPLED), int(TraceFlags.RANDOM_TRACE_ID)
_SERVER, _CLIENT = SpanKind.SERVER.value, SpanKind.CLIENT.value
_SAMPLED_DECISIONS = (Decision.RECORD_AND_SAMPLE,)  # Decision.is_sampled(), typed
_TRACE_CONTEXT = (b"traceparent", b"tracestate")
_ZERO_ID = bytes(8)


class IdSlots:
    """Random trace and span ids, a request's at once: 32 bytes per slot (a 16-byte trace id, the
    server span's 8-byte id and its first client span's), cut from `os.urandom` read 4 KiB at a
    time (one `getrandom` system call per 128 requests). As random as the SDK's
    `RandomIdGenerator` (which draws from the `random` module: the W3C random-trace-id flag
    holds for both), without its two Python calls and the ints' conversions per request: the ids
    stay bytes from here to the pipe, and the `traceparent` headers are their `.hex()`.

    An all-zero id is invalid (the SDK's generator draws again; chance 2^-64 per id): a buffer
    with 8 zero bytes anywhere in it is read again, so no id is ever zero. Thread-safe without a
    lock on the hot path (each slot taken with `next()` on an `itertools.count`, one C call
    under the GIL), and per process: a forked worker drops its parent's buffer
    (`os.register_at_fork`), so two workers never hand out the same ids."""

    SLOT = 32
    SLOTS = 128

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.state: tuple[bytes, itertools.count[int]] = (b"", itertools.count(self.SLOTS))
        os.register_at_fork(after_in_child=self.forget)

    def take(self) -> bytes:
        """One slot: trace id [0:16], span ids [16:24] and [24:32]."""
        while True:
            state = self.state
            slot = next(state[1])
            if slot < self.SLOTS:
                return state[0][slot * self.SLOT : (slot + 1) * self.SLOT]
            with self._lock:
                if self.state is state:  # not refilled by another thread meanwhile
                    self.state = (self._read(), itertools.count())

    def _read(self) -> bytes:
        while True:
            buffer = os.urandom(self.SLOT * self.SLOTS)
            if _ZERO_ID not in buffer:  # no 8 zero bytes anywhere: no id (nor half) is zero
                return buffer

    def forget(self) -> None:
        self._lock = threading.Lock()  # a child may inherit the lock held
        self.state = (b"", itertools.count(self.SLOTS))


class OpenSpan:
    """The request's server span being recorded: what the exporter child needs to make it the
    SDK's span object. `flags` are its W3C trace flags as the SDK gives them (sampled, random
    trace id); `parent_id`, `parent_remote` and `parent_flags` those of its parent (None: a
    root), `state` the trace's `tracestate` header (the parent's, which the SDK's sampler hands
    on), or None; `spare` the span id its first client span takes (from the same id slot)."""

    __slots__ = (
        "flags",
        "parent_flags",
        "parent_id",
        "parent_remote",
        "span_id",
        "spare",
        "start_ns",
        "state",
        "trace_id",
    )

    def __init__(
        self,
        trace_id: bytes,
        span_id: bytes,
        flags: int,
        parent_id: bytes | None,
        parent_remote: bool,
        parent_flags: int,
        state: str | None,
        spare: bytes | None,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.flags = flags
        self.parent_id = parent_id
        self.parent_remote = parent_remote
        self.parent_flags = parent_flags
        self.state = state
        self.spare = spare
        self.start_ns = time.time_ns()

    @property
    def sampled(self) -> bool:
        return bool(self.flags & _SAMPLED)


class ClientSpan:
    """One upstream attempt's span being recorded, a child of the request's server span (whose
    sampled flag it follows, as the SDK's parent-based sampler does for a local parent)."""

    __slots__ = ("attempt", "flags", "server", "span_id", "start_ns", "target")

    def __init__(
        self, server: OpenSpan, span_id: bytes, target: CatalogEntry, attempt: int
    ) -> None:
        self.server = server
        self.span_id = span_id
        self.flags = server.flags
        self.target = target
        self.attempt = attempt
        self.start_ns = time.time_ns()

    @property
    def trace_id(self) -> bytes:
        return self.server.trace_id

    @property
    def sampled(self) -> bool:
        return bool(self.flags & _SAMPLED)


class Tracing:
    def __init__(self, settings: TelemetrySettings) -> None:
        root = TraceIdRatioBased(settings.sample_ratio)
        self.sampler = ParentBased(root)
        # A root's decision is the root sampler's, `trace_id & TRACE_ID_LIMIT < bound` (what
        # TraceIdRatioBased.should_sample computes, its `bound` the SDK's own), made here without
        # the call when no trace context came in: at ratio 1.0 every root is sampled.
        self._root_bound = root.bound
        self._roots_sampled = root.bound > TraceIdRatioBased.TRACE_ID_LIMIT
        self.ids = IdSlots()
        self._propagator = TraceContextTextMapPropagator()
        traces_url = settings.otlp_endpoint.rstrip("/") + "/v1/traces"
        self.pipe = SpanPipe(traces_url, settings.service_name)

    # -- the request's server span (gateway/api/middleware.py) ------------------------------------
    def start_request(
        self, record: RequestRecord, path: str, headers: list[tuple[bytes, bytes]]
    ) -> None:
        for name, _ in headers:
            if name in _TRACE_CONTEXT:
                self._start_remote(record, path, headers)
                return
        ids = self.ids.take()
        trace_id = ids[:16]
        if self._roots_sampled:
            flags = _SAMPLED | _RANDOM
        elif int.from_bytes(trace_id[8:], "big") < self._root_bound:
            flags = _SAMPLED | _RANDOM
        else:
            flags = _RANDOM
        record.span = OpenSpan(trace_id, ids[16:24], flags, None, False, 0, None, ids[24:])
        record.operation = OPERATIONS.get(path)
        record.trace_id = trace_id.hex()

    def _start_remote(
        self, record: RequestRecord, path: str, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """A request that came with W3C trace context: the SDK's propagator reads it and the
        SDK's parent-based sampler decides (as its tracer calls it: the span's name is final
        only at its end)."""
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in headers
            if name in _TRACE_CONTEXT
        }
        context = self._propagator.extract(carrier)
        remote = get_current_span(context).get_span_context()
        ids = self.ids.take()
        parent_id: bytes | None = None
        parent_flags = 0
        if remote.is_valid:
            trace_id = remote.trace_id.to_bytes(16, "big")
            parent_id, parent_flags = remote.span_id.to_bytes(8, "big"), int(remote.trace_flags)
            random_bit = parent_flags & _RANDOM
        else:
            trace_id, random_bit = ids[:16], _RANDOM
        decision = self.sampler.should_sample(
            context, int.from_bytes(trace_id, "big"), record.method, SpanKind.SERVER
        )
        sampled = _SAMPLED if decision.decision in _SAMPLED_DECISIONS else 0
        state = decision.trace_state.to_header() if decision.trace_state else None
        record.span = OpenSpan(
            trace_id,
            ids[16:24],
            sampled | random_bit,
            parent_id,
            parent_id is not None,
            parent_flags,
            state or None,
            ids[24:],
        )
        record.operation = OPERATIONS.get(path)
        record.trace_id = trace_id.hex()

    def end_request(self, record: RequestRecord) -> None:
        span: OpenSpan | None = record.span
        if span is None or not span.flags & _SAMPLED:
            return
        self.pipe.add(
            (
                _SERVER,
                span.trace_id,
                span.span_id,
                span.parent_id,
                span.parent_remote,
                span.parent_flags,
                span.state,
                span.start_ns,
                time.time_ns(),
                record.method,
                record.route,
                record.status,
                record.operation,
                record.request_model,
                record.model,
                record.provider_kind,
                record.provider,
                record.account_id,
                record.cache,
                record.prompt_tokens,
                record.completion_tokens,
                record.cost_usd,
                record.finish_reasons,
            )
        )

    # -- one client span per upstream attempt (gateway/routing/retry.py) -------------------------
    def start_attempt(
        self, record: RequestRecord, target: CatalogEntry, attempt: int
    ) -> ClientSpan:
        server: OpenSpan = record.span
        span_id = server.spare
        if span_id is None:  # a retry or a fallback: a slot of its own
            span_id = self.ids.take()[24:]
        else:
            server.spare = None
        span = record.upstream_span = ClientSpan(server, span_id, target, attempt)
        return span

    def end_attempt(self, record: RequestRecord, span: ClientSpan, error: str | None) -> None:
        record.upstream_span = None
        if not span.flags & _SAMPLED:
            return
        server, model = span.server, span.target.model
        self.pipe.add(
            (
                _CLIENT,
                server.trace_id,
                span.span_id,
                server.span_id,
                False,
                server.flags,
                server.state,
                span.start_ns,
                time.time_ns(),
                record.operation,
                span.target.provider.kind,
                model.upstream_model,
                model.id,
                model.provider,
                span.attempt,
                error,
            )
        )

    def close(self) -> None:
        """Sends what is queued (bounded by the exporter's timeout), then stops the child."""
        self.pipe.shutdown()
