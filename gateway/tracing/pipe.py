"""Ended spans leave the gateway's process as compact rows; an exporter child encodes and sends.

The OTLP exporter's protobuf encoding and its HTTP posts cost more CPU than the spans themselves,
and inside the gateway they ran in a thread that takes the GIL from the event loop. So the
gateway's span processor only turns each ended span into a tuple of plain values (`span_row`),
gathers them, and writes msgpack frames to the stdin pipe of a child process
(gateway/tracing/exporter_child.py), which rebuilds the spans and hands them to the official
OTLP/HTTP exporter. docs/decisions/0019-cache-and-traces.md gives the measured difference.

Bounded: what the pipe does not take at once waits in a buffer of at most `MAX_BUFFERED_BYTES`;
a batch that does not fit is dropped and counted (`dropped_spans`), never waited for. Batches go
when `BATCH_SPANS` spans have ended or every `OTEL_BSP_SCHEDULE_DELAY` ms (the SDK's own setting,
5 s by default), whichever comes first. Shutdown writes what is left, closes the pipe and waits
for the child to send it (it exits at the end of its input).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
from types import MappingProxyType
from typing import Any

import msgspec
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace import SpanContext

log = logging.getLogger("klawd.tracing")

BATCH_SPANS = 256
MAX_BUFFERED_BYTES = 8 * 1024 * 1024
CHILD_EXIT_TIMEOUT_S = 15.0  # the exporter's own timeout (10 s) and some
_encode = msgspec.msgpack.Encoder().encode


def span_row(span: ReadableSpan, context: SpanContext) -> tuple[Any, ...]:
    """What the exporter child needs of an ended span, in plain values (128-bit ids as bytes:
    msgpack integers stop at 64 bits). Read back by `exporter_child.span_from_row`."""
    parent = span.parent
    state = context.trace_state
    status = span.status
    # the SDK's read-only view: its `copy()` copies the plain dict behind it, far cheaper than
    # iterating the bounded mapping key by key
    attributes = span.attributes
    plain = (
        attributes.copy() if isinstance(attributes, MappingProxyType) else dict(attributes or {})
    )
    return (
        span.name,
        context.trace_id.to_bytes(16, "big"),
        context.span_id,
        int(context.trace_flags),
        state.to_header() if state else None,
        None if parent is None else parent.span_id,
        parent is not None and parent.is_remote,
        span.kind.value,
        span.start_time,
        span.end_time,
        plain,
        status.status_code.value,
        status.description,
        [(e.name, e.timestamp, dict(e.attributes or {})) for e in span.events]
        if span.events
        else (),
    )


class PipeSpanProcessor(SpanProcessor):
    def __init__(self, endpoint: str, service_name: str) -> None:
        self._command = [
            sys.executable,
            "-m",
            "gateway.tracing.exporter_child",
            endpoint,
            service_name,
        ]
        self._delay_s = int(os.environ.get("OTEL_BSP_SCHEDULE_DELAY", "5000")) / 1000
        self._lock = threading.Lock()
        self._rows: list[tuple[Any, ...]] = []
        self._unsent = bytearray()
        self.dropped_spans = 0
        self._stopping = threading.Event()
        self._pid = -1
        self._child: subprocess.Popen[bytes] | None = None
        self._start()
        # a forked worker starts its own child and timer (neither is inherited) when it first
        # ends a span; checked on a flag, because os.getpid() is a system call per span
        self._forked = False
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._forked = True
        self._lock = threading.Lock()

    def _start(self) -> None:
        self._forked = False
        self._pid = os.getpid()
        self._rows, self._unsent = [], bytearray()
        self._broken = False
        # our own interpreter and module, the endpoint and name from the settings: no shell
        child = subprocess.Popen(self._command, stdin=subprocess.PIPE, close_fds=True)  # noqa: S603
        if child.stdin is not None:
            os.set_blocking(child.stdin.fileno(), False)
        self._child = child
        threading.Thread(target=self._tick, name="klawd-span-pipe", daemon=True).start()

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None or not context.trace_flags.sampled:
            return
        row = span_row(span, context)
        with self._lock:
            if self._forked:
                self._start()
            self._rows.append(row)
            if len(self._rows) >= BATCH_SPANS:
                self._flush()

    def _tick(self) -> None:
        while not self._stopping.wait(self._delay_s):
            with self._lock:
                self._flush()

    def _flush(self) -> None:
        """Frames the gathered rows and writes what the pipe takes now (the lock is held)."""
        rows, self._rows = self._rows, []
        if rows:
            payload = _encode(rows)
            if len(self._unsent) + len(payload) + 4 > MAX_BUFFERED_BYTES:
                self._drop(len(rows))
            else:
                self._unsent += len(payload).to_bytes(4, "big") + payload
        child = self._child
        if not self._unsent or child is None or child.stdin is None:
            return
        if self._broken:
            self._unsent = bytearray()
            return
        try:
            written = os.write(child.stdin.fileno(), self._unsent)
        except BlockingIOError:
            return
        except OSError:  # the child is gone: nothing more can be sent
            log.warning("the span exporter child has exited; spans are dropped")
            self._broken = True
            self._unsent = bytearray()
            return
        del self._unsent[:written]

    def _drop(self, count: int) -> None:
        if self.dropped_spans == 0:
            log.warning("the span exporter falls behind; spans are dropped")
        self.dropped_spans += count

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        with self._lock:
            self._flush()
            return not self._unsent

    def shutdown(self) -> None:
        self._stopping.set()
        with self._lock:
            self._flush()
            child, self._child = self._child, None
            unsent, self._unsent = bytes(self._unsent), bytearray()
        if child is None or child.stdin is None or self._pid != os.getpid():
            return
        with contextlib.suppress(OSError):  # a child that has exited reads nothing more
            os.set_blocking(child.stdin.fileno(), True)
            if not self._broken:
                child.stdin.write(unsent)
        with contextlib.suppress(OSError):
            child.stdin.close()
        try:
            child.wait(CHILD_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if self.dropped_spans:
            log.warning("%d spans were dropped (the exporter fell behind)", self.dropped_spans)
