"""One JSON log line per request, written off the event loop, in batches.

The outermost middleware opens a `RequestRecord` for each HTTP request and makes it the current
one (a ContextVar: the handler, the stream relay and the upstream calls of that request run in
the same context). Metering fills in the account, the served model, tokens and cost; upstream
calls count themselves. When the response ends (for a stream: when the stream ends) the
middleware writes the record as one JSON line: its fields are gathered in memory, and a writer
thread encodes them and writes the lines to stderr in batches.

The record holds no key, prompt or completion: only ids, names from the catalog, and numbers —
unless the operator sets `server.log_bodies_bytes` (debugging), which adds the first bytes of the
request and answer bodies of the API routes (/v1/..., /api/...; never the admin API or Mission
Control, whose bodies carry keys and secrets).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import queue
import sys
import threading
from contextvars import ContextVar
from typing import Any, BinaryIO, TextIO, cast

import msgspec
import orjson
from msgspec import Struct

from gateway.threads import behind_the_event_loop, ended_within


class CappedBytes:
    """The first `limit` bytes of a body, and how many there were in all."""

    __slots__ = ("kept", "limit", "seen")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept = bytearray()
        self.seen = 0

    def add(self, chunk: bytes) -> None:
        self.seen += len(chunk)
        if len(self.kept) < self.limit:
            self.kept += chunk[: self.limit - len(self.kept)]

    def text(self) -> str:
        text = self.kept.decode("utf-8", errors="replace")
        left = self.seen - len(self.kept)
        return f"{text}…[{left} more bytes]" if left else text


class BodyCapture:
    """Debug logging of bodies (`server.log_bodies_bytes`): the start of the request body and of
    the answer (a stream: its SSE bytes), for the log line."""

    __slots__ = ("request", "response")

    def __init__(self, limit: int) -> None:
        self.request = CappedBytes(limit)
        self.response = CappedBytes(limit)


class RequestRecord:
    __slots__ = (
        "account_id",
        "bodies",
        "body_error",
        "body_errors",
        "cache",
        "completion_tokens",
        "cost_usd",
        "finish_reasons",
        "first_byte_at",
        "held",
        "images_lost",
        "method",
        "model",
        "operation",
        "plan",
        "prompt_tokens",
        "provider",
        "provider_kind",
        "request_id",
        "request_model",
        "route",
        "settled_counters",
        "settled_status",
        "span",
        "status",
        "stream",
        "stream_open",
        "trace_id",
        "upstream_attempts",
        "upstream_span",
    )

    def __init__(self, request_id: str, method: str) -> None:
        self.request_id = request_id
        self.method = method
        self.route = ""
        self.status = 0  # the HTTP status sent (0: no answer started)
        self.settled_status = 0  # the ledger's, once the request is settled (Meter.settle)
        # Its settlement's counters, counted with its end (gateway/observer.py): their slot
        # once settled, NOT_SETTLED before, ENDED once the end has counted.
        self.settled_counters = NOT_SETTLED
        # The line waits for the ledger's status (`RequestLog.hold`): HELD, or the line's times
        # once the response ended meanwhile.
        self.held: object = None
        self.first_byte_at: float | None = None  # time.perf_counter() of the first body byte
        self.stream_open = False
        self.account_id: str | None = None
        self.plan: str | None = None
        self.model: str | None = None
        self.provider: str | None = None
        self.stream = False
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost_usd = 0.0
        self.upstream_attempts = 0
        # An upstream answer that failed after its headers: the last one's type, and how many
        # (a request retried or fell back over several).
        self.body_error: str | None = None
        self.body_errors = 0
        self.images_lost = 0  # images generated upstream that the client did not get
        self.bodies: BodyCapture | None = None
        self.cache: str | None = None  # hit | miss | bypass when the request asked for the cache
        self.trace_id: str | None = None  # 32 hex digits when the request is traced
        # Traces only (gateway/tracing/): the spans, and what only the spans report.
        self.span: Any = None  # the request's server span
        self.upstream_span: Any = None  # the client span of the upstream attempt in progress
        self.operation: str | None = None  # gen_ai.operation.name
        self.request_model: str | None = None  # the model the client asked for
        self.provider_kind: str | None = None  # the served provider's kind
        self.finish_reasons: list[str] | None = None

    def entry(self, latency_ms: float, ttfb_ms: float | None) -> RequestLine:
        """The log line's fields as of now (the record may change after; the entry does not)."""
        return self.rounded_entry(
            # To the microsecond by round() of the product: round(x, 3) rounds through the
            # number's decimal digits, twice the instructions (2.8K against 1.3K a call).
            round(latency_ms * 1000) / 1000,
            None if ttfb_ms is None else round(ttfb_ms * 1000) / 1000,
        )

    def rounded_entry(self, latency_ms: float, ttfb_ms: float | None) -> RequestLine:
        """`entry`, the times rounded to the microsecond already (as `entry` rounds them: the
        observer's `RunningTotals.end` gives them so)."""
        # How the request ended: the ledger's status once settled (a stream the client left
        # after its 200 is a 499 there, one the upstream broke a 502, one the drain ended a
        # 503; a request whose client left before any answer has no HTTP status, and is a 499),
        # else the HTTP status sent.
        sent = self.status
        status = self.settled_status or sent
        bodies = self.bodies
        return RequestLine(
            self.request_id,
            self.method,
            self.route,
            status,
            latency_ms,
            ttfb_ms,
            self.account_id,
            self.plan,
            self.model,
            self.provider,
            self.stream,
            self.prompt_tokens,
            self.completion_tokens,
            self.cost_usd,
            # Upstream calls beyond the first: retries of a target and fallbacks to the next.
            self.upstream_attempts - 1 if self.upstream_attempts > 1 else 0,
            sent if sent != status else 0,  # the status line the client got said otherwise
            self.body_error,
            self.body_errors if self.body_errors > 1 else 0,
            self.images_lost,
            self.cache,
            self.trace_id,
            None if bodies is None else bodies.request.text(),
            None if bodies is None else bodies.response.text(),
        )

    def line(self, latency_ms: float, ttfb_ms: float | None) -> str:
        """The line alone, as the writer encodes it in a batch."""
        return msgspec.json.encode(self.entry(latency_ms, ttfb_ms)).decode()


class RequestLine(Struct, frozen=True, omit_defaults=True, tag_field="event", tag="request"):
    """One request's log line (docs/operations.md), in its keys' order: `event` first, the
    fields every line has, then those a line has only when they say something (a field at its
    default is left out). Made on the event loop, encoded on the writer's thread, a batch at
    a time; msgspec writes what orjson wrote for a dict of the same values (floats below 1e16:
    orjson wrote `1e+16` where msgspec writes `1e16`, far past any latency or cost)."""

    request_id: str
    method: str
    route: str
    status: int
    latency_ms: float
    ttfb_ms: float | None
    account_id: str | None
    plan: str | None
    model: str | None
    provider: str | None
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    retries: int
    http_status: int = 0
    upstream_body_error: str | None = None
    upstream_body_errors: int = 0
    images_lost: int = 0
    cache: str | None = None
    trace_id: str | None = None
    request_body: str | None = None
    response_body: str | None = None


current_request: ContextVar[RequestRecord | None] = ContextVar("klawd_request", default=None)


def note_requested_model(model: str) -> None:
    """The model id the client asked for (an alias before routing), for the request's trace."""
    record = current_request.get()
    if record is not None:
        record.request_model = model


CLOSE_WAIT_S = 10.0  # how long a shutdown waits for the writer's last lines, at most


class RequestLog:
    """Request lines are gathered on the event loop and handed to one writer thread in batches
    (every HAND_OVER_S, or at MAX_BATCH lines), which writes them to the stream (stderr): the
    event loop never waits on the stream, and the writer wakes a few times a second rather than
    once per request (each wake-up would take the GIL from the event loop).

    A stream that stops taking lines (a log driver in blocking mode whose collector stalls, a
    paused terminal) blocks the writer; lines handed to it and not yet written are bounded by
    MAX_BACKLOG (tens of MB), past which new ones are dropped, not kept: the worker's memory,
    and every request it serves, come before its log. Once the stream takes lines again, the
    writer says how many were dropped, in a line of its own."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._pending: list[RequestLine] = []
        self._queue: queue.SimpleQueue[list[RequestLine] | None] = queue.SimpleQueue()
        self._encoder = msgspec.json.Encoder()  # (the writer's: an encoder per thread)
        self._thread = threading.Thread(target=self._run, name="klawd-request-log", daemon=True)
        # Lines handed over and dropped (counted by the event loop's thread), and written or
        # lost to a closed stream (by the writer's): each count has one writer, so no lock.
        self._handed = 0
        self._dropped = 0
        self._written = 0
        self._dropped_said = 0  # (the writer's: the drops it has reported)

    def start(self) -> None:
        self._thread.start()

    def add(self, line: RequestLine) -> None:
        """A line made (`RequestRecord.entry`, `rounded_entry`), for the writer."""
        pending = self._pending
        pending.append(line)
        gathered = len(pending)
        if gathered >= MAX_BATCH:
            self._hand_over()
        elif gathered == 1:
            try:
                asyncio.get_running_loop().call_later(HAND_OVER_S, self._hand_over)
            except RuntimeError:  # no event loop (a script, a test): no batching
                self._hand_over()

    @staticmethod
    def hold(record: RequestRecord) -> None:
        """The record's line waits for `release`: a request cancelled while its admission's
        reply travels (gateway/pending_admission.py), which the ledger settles 499 if the
        reply admitted, once it comes."""
        record.held = HELD

    def release(self, record: RequestRecord) -> None:
        """The held record's line is written now, if its response has ended (else when it
        ends: `RequestObserver.http_finished`, which left its times rounded)."""
        ended, record.held = record.held, None
        if type(ended) is tuple:
            self.add(record.rounded_entry(*ended))

    def _hand_over(self) -> None:
        pending = self._pending
        if pending:
            self._pending = []
            if self._handed - self._written >= MAX_BACKLOG:  # the writer is stuck
                self._dropped += len(pending)
                return
            self._handed += len(pending)
            self._queue.put(pending)

    def _run(self) -> None:
        behind_the_event_loop()
        encode_lines = self._encoder.encode_lines
        stream: TextIO | None = None
        binary: BinaryIO | None = None
        while (lines := self._queue.get()) is not None:
            current = self._stream  # (read a batch at a time, as it always was)
            if current is not stream:
                stream, binary = current, _utf8_bytes_under(current)
            try:
                data = encode_lines(lines)  # (the batch's JSON lines, in one call)
            except (TypeError, ValueError):  # a value JSON cannot hold (a lone surrogate)
                data = self._each_line(lines)
            dropped = self._dropped - self._dropped_said
            if dropped:
                self._dropped_said += dropped
                notice = {"event": "request_log_dropped", "lines": dropped, "why": DROPPED_WHY}
                data = orjson.dumps(notice) + b"\n" + data
            try:
                if binary is not None:
                    current.flush()  # (text another writer left in it goes first)
                    binary.write(data)
                    binary.flush()
                else:
                    current.write(data.decode())
                    current.flush()
            except (OSError, ValueError):
                pass  # a closed stream must not kill the writer: the lines are dropped
            self._written += len(lines)

    def _each_line(self, lines: list[RequestLine]) -> bytes:
        """The lines encoded one by one: one that cannot be is left out (it is counted
        written, as the lines a closed stream loses), not the batch with it."""
        encode = self._encoder.encode
        data = []
        for line in lines:
            with contextlib.suppress(TypeError, ValueError):
                data.append(encode(line) + b"\n")
        return b"".join(data)

    def close(self, within_s: float = CLOSE_WAIT_S) -> bool:
        """Writes what is gathered, then stops the thread, waiting at most `within_s`: whether
        it ended. Cut, the writer (a daemon) goes on while the process lives; `unwritten`
        says how many lines it had not written."""
        if self._stop():
            self._thread.join(timeout=within_s)
        return not self._thread.is_alive()

    async def aclose(self, within_s: float = CLOSE_WAIT_S) -> bool:
        """`close`, for the event loop's thread (the lifespan's shutdown): the wait for the
        writer runs on a thread of its own, so the loop goes on meanwhile."""
        if self._stop():
            await ended_within(self._thread.join, within_s, "klawd-request-log-close")
        return not self._thread.is_alive()

    def _stop(self) -> bool:
        """Hands what is gathered to the writer and tells it to end after that: whether it
        runs (then it is to be waited for)."""
        self._hand_over()
        if not self._thread.is_alive():
            return False
        self._queue.put(None)
        return True

    @property
    def unwritten(self) -> int:
        """Lines handed to the writer and not written yet (its count: the writer's thread's)."""
        return self._handed - self._written


def _utf8_bytes_under(stream: TextIO) -> BinaryIO | None:
    """The bytes under a UTF-8 text stream (stderr's buffer), for the writer to write the
    batch's JSON (UTF-8 already) to as it is: no decode into a str that the text layer encodes
    back (~0.7K instructions a line). None for a stream without one (a StringIO) or of another
    encoding (whose errors handler may write non-ASCII otherwise): its text is written."""
    binary = getattr(stream, "buffer", None)
    encoding = getattr(stream, "encoding", None)
    if binary is None or encoding is None or codecs.lookup(encoding).name != "utf-8":
        return None
    return cast("BinaryIO", binary)


HELD = object()  # `RequestRecord.held`: the line waits for its status
# `RequestRecord.settled_counters` before a settlement, and once the request's end counted.
NOT_SETTLED = -1
ENDED = -2
HAND_OVER_S = 0.05
MAX_BATCH = 256
# Lines handed to the writer and not yet written, at most (~300 bytes each: ~20 MB).
MAX_BACKLOG = 65_536
DROPPED_WHY = "the log stream did not take lines as fast as they came"
