"""Ended spans leave the gateway's process as compact rows; an exporter child makes and sends them.

The OpenTelemetry SDK's span objects, the OTLP exporter's protobuf encoding and its HTTP posts
cost more CPU than the request path's own bookkeeping, and inside the gateway they ran on the
event loop or in a thread that takes the GIL from it. So the request path only keeps each span's
plain values (gateway/tracing/otel.py), and an ended, sampled span is one row
(gateway/tracing/rows.py) written by the Rust core's `SpanRecorder` straight into the msgpack
frame being gathered (or, for a value it has no form for, a tuple encoded by msgspec and handed
to `SpanPipe.add`); frames are written to the stdin pipe of a child process
(gateway/tracing/exporter_child.py), which makes the rows the SDK's span objects and hands them
to the official OTLP/HTTP exporter. docs/decisions/0019-cache-and-traces.md gives the measured
difference.

Bounded: what the pipe does not take at once waits in a buffer of at most `MAX_BUFFERED_BYTES`;
a batch that does not fit is dropped and counted (`dropped_spans`), never waited for. Batches go
when `BATCH_SPANS` spans have ended or every `OTEL_BSP_SCHEDULE_DELAY` ms (the SDK's own setting,
5 s by default), whichever comes first. Shutdown writes what is left, closes the pipe and waits
for the child to send it (it exits at the end of its input), within CHILD_EXIT_TIMEOUT_S.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec

from gateway._core import SpanRecorder

log = logging.getLogger("klawd.tracing")

# the SDK's BatchSpanProcessor's setting and default: a frame (and one OTLP POST) per 512 spans
BATCH_SPANS = max(1, int(os.environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512")))
RETRY_WRITE_S = 0.05  # what the pipe did not take is offered again this soon
MAX_BUFFERED_BYTES = 8 * 1024 * 1024
CHILD_EXIT_TIMEOUT_S = 15.0  # the exporter's own timeout (10 s) and some
# an attribute value msgpack has no form for goes as its str(), as the SDK casts it
_encode = msgspec.msgpack.Encoder(enc_hook=str).encode


def _write_by(
    fd: int, data: bytes, deadline: float, wrote: Callable[[int], None] = lambda count: None
) -> None:
    """`data` down the pipe `fd` (non-blocking) as fast as it is read, until `deadline`
    (time.monotonic()), telling `wrote` of each write's bytes. Polled, not `select`ed: select
    takes no descriptor from 1024 on."""
    view = memoryview(data)
    ready = select.poll()
    ready.register(fd, select.POLLOUT)
    while view:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        if ready.poll(left * 1000):
            with contextlib.suppress(BlockingIOError):
                written = os.write(fd, view)
                view = view[written:]
                wrote(written)


def _frames_written(frames: deque[list[int]], count: int) -> int:
    """`count` more bytes of the `frames` ([bytes not written yet, spans] each, in order)
    written: the spans of the frames they end, which are taken off."""
    spans = 0
    while count and frames:
        first = frames[0]
        taken = min(count, first[0])
        first[0] -= taken
        count -= taken
        if first[0] == 0:
            spans += frames.popleft()[1]
    return spans


class SpanPipe:
    """The rows of ended spans, down a pipe to this process's exporter child."""

    def __init__(self, endpoint: str, service_name: str, root_bound: int = 1 << 64) -> None:
        # -P: the child imports the gateway this process runs, not a `gateway` in the cwd
        self._command = [
            sys.executable,
            "-P",
            "-m",
            "gateway.tracing.exporter_child",
            endpoint,
            service_name,
        ]
        self._delay_s = int(os.environ.get("OTEL_BSP_SCHEDULE_DELAY", "5000")) / 1000
        self._lock = threading.Lock()
        # the rows being gathered, and the ids of the spans (root_bound: the sampler's, see
        # gateway/tracing/otel.py); end_server/end_client/push answer True when a frame is due
        self.recorder = SpanRecorder(os.urandom, root_bound, BATCH_SPANS)
        self._unsent = bytearray()
        # Each frame in `_unsent`, in order: [its bytes not written yet, its spans].
        self._frames: deque[list[int]] = deque()
        self.dropped_spans = 0
        # Bytes of rows, and spans, the shutdown has still to write to the child (another
        # thread reads them when the shutdown is cut: gateway/app.py). A span counts as written
        # once its whole frame is: the child drops a partial last frame.
        self.unwritten_bytes = 0
        self.unwritten_spans = 0
        self._stopping = threading.Event()
        self._pid = -1
        self._child: subprocess.Popen[bytes] | None = None
        self._start()
        # a forked worker starts its own child and timer (neither is inherited) when it first
        # ends a span; checked on a flag, because os.getpid() is a system call per span
        self._forked = False
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self.recorder.forget()  # the parent's ids and rows are not this process's
        self._forked = True
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)

    def _start(self) -> None:
        self._forked = False
        self._pid = os.getpid()
        self._unsent = bytearray()
        self._frames = deque()
        self._broken = False
        # our own interpreter and module, the endpoint and name from the settings: no shell
        child = subprocess.Popen(self._command, stdin=subprocess.PIPE, close_fds=True)  # noqa: S603
        if child.stdin is not None:
            os.set_blocking(child.stdin.fileno(), False)
        self._child = child
        self._wakeup = threading.Condition(self._lock)
        threading.Thread(target=self._tick, name="klawd-span-pipe", daemon=True).start()

    def add(self, row: tuple[Any, ...]) -> None:
        """One ended, sampled span's row as a tuple (gateway/tracing/rows.py), encoded by
        msgspec: the way for a row with a value the recorder has no form for (msgspec casts it
        to text, or the row is dropped and counted, never its frame nor the request whose span
        filled the batch); never waits for the child."""
        try:
            encoded = _encode(row)
        except (OverflowError, TypeError, ValueError):
            log.warning("a span had a value msgpack cannot carry; it is dropped")
            self.dropped_spans += 1
            return
        if self.recorder.push(encoded):
            self.attend()

    def attend(self) -> None:
        """The recorder's frame is full, or this process forked since its last row (a forked
        worker starts its own child and timer, neither inherited, at its first span)."""
        if self._forked:
            with self._lock:
                if self._forked:
                    self._start()
        if len(self.recorder) >= self.recorder.batch:
            with self._lock:
                self._flush()

    def _tick(self) -> None:
        """Flushes every `OTEL_BSP_SCHEDULE_DELAY` ms. A frame can be larger than the pipe
        (64 KiB): the rest the pipe did not take is offered again every `RETRY_WRITE_S` (woken by
        `_write`), not at the next batch or tick, while the child waits for it mid-frame."""
        wakeup = self._wakeup
        next_flush = time.monotonic() + self._delay_s
        with wakeup:
            while not self._stopping.is_set():
                wait = next_flush - time.monotonic()
                if self._unsent:
                    wait = min(wait, RETRY_WRITE_S)
                wakeup.wait(max(wait, 0.0))
                if self._stopping.is_set():
                    return
                if time.monotonic() >= next_flush:
                    self._flush()
                    next_flush = time.monotonic() + self._delay_s
                elif self._unsent:
                    self._write()

    def _flush(self) -> None:
        """Takes the gathered rows' frame and writes what the pipe takes now (the lock is held;
        rows recorded meanwhile go in the next frame)."""
        taken = self.recorder.take()
        if taken is not None:
            count, payload = taken
            if len(self._unsent) + len(payload) + 4 > MAX_BUFFERED_BYTES:
                self._drop(count)
            else:
                self._unsent += len(payload).to_bytes(4, "big") + payload
                self._frames.append([len(payload) + 4, count])
        self._write()

    def _write(self) -> None:
        """Writes what the pipe takes now of the framed rows (the lock is held)."""
        child = self._child
        if not self._unsent or child is None or child.stdin is None:
            return
        if self._broken:
            self._unsent = bytearray()
            self._frames.clear()
            return
        try:
            written = os.write(child.stdin.fileno(), self._unsent)
        except BlockingIOError:
            self._wakeup.notify()  # the ticker offers it again soon
            return
        except OSError:  # the child is gone: nothing more can be sent
            log.warning("the span exporter child has exited; spans are dropped")
            self._broken = True
            self._unsent = bytearray()
            self._frames.clear()
            return
        del self._unsent[:written]
        _frames_written(self._frames, written)
        if self._unsent:
            self._wakeup.notify()

    def _drop(self, count: int) -> None:
        if self.dropped_spans == 0:
            log.warning("the span exporter falls behind; spans are dropped")
        self.dropped_spans += count

    def flush(self) -> bool:
        """Writes what is gathered now; True when the pipe took all of it."""
        with self._lock:
            self._flush()
            return not self._unsent

    def shutdown(self) -> None:
        """Writes what is left, closes the pipe and waits for the child to send it, all within
        CHILD_EXIT_TIMEOUT_S; then the child is killed. (The write was a blocking one: a child
        that stopped reading, stopped or stuck, held the worker's shutdown for ever.)"""
        self._stopping.set()
        with self._lock:
            self._wakeup.notify()
            self._flush()
            child, self._child = self._child, None
            unsent, self._unsent = bytes(self._unsent), bytearray()
            frames, self._frames = self._frames, deque()
        if child is None or child.stdin is None or self._pid != os.getpid():
            return
        deadline = time.monotonic() + CHILD_EXIT_TIMEOUT_S
        self.unwritten_spans = sum(spans for _, spans in frames)
        self.unwritten_bytes = len(unsent)

        def wrote(count: int) -> None:
            self.unwritten_spans -= _frames_written(frames, count)
            self.unwritten_bytes -= count

        with contextlib.suppress(OSError):  # a child that has exited reads nothing more
            if not self._broken:
                _write_by(child.stdin.fileno(), unsent, deadline, wrote)
        with contextlib.suppress(OSError):
            child.stdin.close()
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning(
                "the span exporter did not finish within %g s of the shutdown: stopped, what it "
                "had not sent is lost",
                CHILD_EXIT_TIMEOUT_S,
            )
            child.kill()
            child.wait()
        if self.dropped_spans:
            log.warning("%d spans were dropped (the exporter fell behind)", self.dropped_spans)
