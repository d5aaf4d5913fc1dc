"""Many concurrent streams, from the client's side: time to first byte, completion, lateness.

    python -m loadtests.bench.long_streams '{"url": …, "body": …, "headers": {…}, "count": N,
        "ramp_s": R, "until_s": U, "timeout_s": T}'

Opens `count` streams (one connection each), their starts spread evenly over `ramp_s` seconds.
With `until_s` > 0 each of the `count` slots opens a new stream as soon as its last one ended,
until `until_s` seconds after the start (the burst: streams opened within one second and
reopened as they end); otherwise each slot runs one stream. A stream is complete when its answer
is a 200 carrying `data: [DONE]` and the chunked body's last chunk.

Lateness: the paced upstream puts its clock into every content delta (`tok<i> <unix time with
ms>`, nginx's $msec); an event's lateness is when the client read it minus when the upstream
wrote it, so it covers every hop in between and nothing of the upstream's own pacing drift.
Reported over all events, and over the events the upstream wrote after the ramp (`ramp_s` + 1 s
after the start: once every stream is open). The client's own lag is measured too: a 10 ms
ticker on its loop records how late it woke, so a late client shows up as itself.

With `"events": true` in the spec, each event's relay delay too (decision 0012, 19zzzzf): the
answer is de-chunked and, for every whole event (its blank line read) that the upstream wrote
once every stream is open, the time it was read minus its stamp (paced_upstream.py's
`--stamp-us`: microseconds), over all such events: p50, p99, max (`relay_*`); and each
stream's time from its request to its last byte (`stream_ms_mean`), and both means for the
first `count` streams opened and for the rest apart (`first_wave`). Off by default: the
de-chunking costs the client's core.

With `"keepalive": true`, each slot keeps one connection and sends its next request on it as
soon as the last answer ends, as wrk does (`kept_slot`); by default each stream has its own.

Every stream's TTFB is returned too (`ttfb_ms`, in the order the streams were opened), so that
rounds can be pooled (report.pooled_p99).

The client is a bare asyncio Protocol on uvloop (no HTTP library): with thousands of streams a
chunk per line, a heavier client would measure itself. Prints one JSON object. Bounded: each
stream has a timeout of `timeout_s`, the run ends by `until_s` + `timeout_s`.
"""

from __future__ import annotations

import asyncio
import re
import resource
import sys
import time
from urllib.parse import urlsplit

import orjson
import uvloop

STAMP = re.compile(rb"tok\d+ (\d{10}\.\d{3,6})")
END = b"0\r\n\r\n"


class Dechunker:
    """An HTTP/1.1 chunked body, read incrementally (`feed` gives the body's bytes so far)."""

    def __init__(self) -> None:
        self.pending = b""  # an unfinished size line
        self.left = 0  # bytes of the current chunk's data still to come
        self.skip = 0  # bytes of the CRLF after a chunk's data still to come
        self.done = False

    def feed(self, data: bytes) -> bytes:
        data = self.pending + data
        self.pending = b""
        out = []
        at = 0
        while at < len(data) and not self.done:
            if self.left:
                piece = data[at : at + self.left]
                out.append(piece)
                self.left -= len(piece)
                at += len(piece)
                if not self.left:
                    self.skip = 2
            elif self.skip:
                taken = min(self.skip, len(data) - at)
                self.skip -= taken
                at += taken
            else:
                end = data.find(b"\r\n", at)
                if end < 0:
                    self.pending = data[at:]
                    break
                size = int(data[at:end].split(b";", 1)[0], 16)
                at = end + 2
                self.done = size == 0
                self.left = size
        return b"".join(out)


def relay_delays(events: list[bytes], read_at: float, since: float) -> list[float]:
    """For each whole event stamped at or after `since` (unix seconds): `read_at` minus its
    stamp, in ms."""
    found = []
    for event in events:
        stamp = STAMP.search(event)
        if stamp is not None and float(stamp.group(1)) >= since:
            found.append((read_at - float(stamp.group(1))) * 1000)
    return found


class Stream(asyncio.Protocol):
    """One request over its own connection; the answer is inspected as it arrives."""

    steady_from = float("inf")  # unix time from which every stream is open (set by `run`)
    started_at = 0.0  # unix time of the start (set by `run`)
    # the worst lateness of the events the upstream wrote in each second of the run
    late_by_second: list[float] = []  # noqa: RUF012 (one run per process)
    # each whole event's relay delay (ms), with `"events": true` (set by `run`)
    delays: list[float] | None = None

    def __init__(self, request: bytes, done: asyncio.Future[None], kept: bool = False) -> None:
        self.request = request
        self.done = done
        self.kept = kept  # on a kept-alive connection: its end leaves the connection open
        self.started = time.perf_counter()
        self.ttfb_s: float | None = None
        self.head = b""
        self.tail = b""
        self.status_ok = False
        self.saw_done = False
        self.events = 0
        self.max_late_s = 0.0
        self.max_late_after_s = 0.0  # of events the upstream wrote after `Stream.steady_from`
        self.transport: asyncio.Transport | None = None
        self.last_byte_s = 0.0
        self.body: Dechunker | None = None
        self.events_text = b""  # the body since its last whole event

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.ttfb_s is None:
            self.ttfb_s = time.perf_counter() - self.started
            self.status_ok = data.startswith(b"HTTP/1.1 200")
        now = time.time()
        if Stream.delays is not None:
            self.read_events(data, now)
        window = self.tail + data  # a stamp split across reads is found whole (max: no harm)
        for stamp in STAMP.findall(window):
            written = float(stamp)
            self.max_late_s = max(self.max_late_s, now - written)
            second = int(written - Stream.started_at)
            if 0 <= second < len(Stream.late_by_second):
                Stream.late_by_second[second] = max(Stream.late_by_second[second], now - written)
            if written >= self.steady_from:
                self.max_late_after_s = max(self.max_late_after_s, now - written)
        self.events += (self.tail[-1:] + data).count(b"\n\n")
        if b"data: [DONE]" in window:
            self.saw_done = True
        self.tail = window[-32:]
        if self.tail.endswith(END) and self.transport is not None:
            self.last_byte_s = time.perf_counter() - self.started
            if not self.kept:
                self.transport.close()
            elif not self.done.done():
                self.done.set_result(None)

    def read_events(self, data: bytes, now: float) -> None:
        """The whole events this read completes, each one's relay delay kept."""
        if self.body is None:  # the head first
            head_end = (self.events_text + data).find(b"\r\n\r\n")
            if head_end < 0:
                self.events_text += data
                return
            data = (self.events_text + data)[head_end + 4 :]
            self.events_text = b""
            self.body = Dechunker()
        text = self.events_text + self.body.feed(data)
        *events, self.events_text = text.split(b"\n\n")
        if events and Stream.delays is not None:
            Stream.delays.extend(relay_delays(events, now, self.steady_from))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)

    @property
    def complete(self) -> bool:
        return self.status_ok and self.saw_done and self.tail.endswith(END)


async def one(host: str, port: int, request: bytes, timeout_s: float) -> Stream | None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    stream = Stream(request, done)
    try:
        async with asyncio.timeout(timeout_s):
            transport, _ = await loop.create_connection(lambda: stream, host, port)
            try:
                await done
            finally:
                transport.close()
    except (OSError, TimeoutError):
        return stream if stream.ttfb_s is not None else None
    return stream


def http_request(spec: dict[str, object]) -> tuple[str, int, bytes]:
    url = urlsplit(str(spec["url"]))
    body = str(spec["body"]).encode()
    headers = {"host": url.netloc, "content-type": "application/json",
               "content-length": str(len(body)),
               "connection": "keep-alive" if spec.get("keepalive") else "close",
               **dict(spec["headers"])}  # type: ignore[call-overload]  # fmt: skip
    head = f"POST {url.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return url.hostname or "127.0.0.1", url.port or 80, head.encode() + b"\r\n" + body


async def slot(spec: dict[str, object], delay_s: float, deadline: float) -> list[Stream | None]:
    await asyncio.sleep(delay_s)
    host, port, request = http_request(spec)
    timeout_s = float(spec["timeout_s"])  # type: ignore[arg-type]
    outcomes = [await one(host, port, request, timeout_s)]
    while time.perf_counter() < deadline:
        outcomes.append(await one(host, port, request, timeout_s))
    return outcomes


class Kept(asyncio.Protocol):
    """One kept-alive connection: its bytes go to the stream in flight on it."""

    def __init__(self) -> None:
        self.current: Stream | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.current is not None:
            self.current.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.current is not None:
            self.current.connection_lost(exc)


async def kept_slot(
    spec: dict[str, object], delay_s: float, deadline: float
) -> list[Stream | None]:
    """`slot` with `"keepalive": true`: one connection, each next request sent on it as soon as
    the last answer's end is read (as wrk does); a connection lost or a stream timed out ends
    the slot."""
    await asyncio.sleep(delay_s)
    host, port, request = http_request(spec)
    timeout_s = float(spec["timeout_s"])  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    kept = Kept()
    try:
        async with asyncio.timeout(timeout_s):
            await loop.create_connection(lambda: kept, host, port)
    except (OSError, TimeoutError):
        return [None]
    outcomes: list[Stream | None] = []
    try:
        while not outcomes or time.perf_counter() < deadline:
            if kept.transport is None or kept.transport.is_closing():
                break
            stream = Stream(request, loop.create_future(), kept=True)
            stream.transport = kept.transport
            kept.current = stream
            kept.transport.write(request)
            try:
                async with asyncio.timeout(timeout_s):
                    await stream.done
            except TimeoutError:
                outcomes.append(stream if stream.ttfb_s is not None else None)
                break
            outcomes.append(stream)
    finally:
        if kept.transport is not None:
            kept.transport.close()
    return outcomes


def first_wave(streams: list[Stream], count: int) -> dict[str, float | None]:
    """The first `count` streams opened (every slot's first: with `ramp_s` 0 they start
    together, as wrk's connections do) against the streams opened after them: mean TTFB and
    mean stream time (request to last byte) of the complete ones in each."""
    opened = sorted(streams, key=lambda s: s.started)
    found: dict[str, float | None] = {}
    for wave, members in (("first", opened[:count]), ("later", opened[count:])):
        whole = [s for s in members if s.complete and s.last_byte_s and s.ttfb_s is not None]
        found[f"ttfb_ms_{wave}_mean"] = (
            sum(s.ttfb_s or 0.0 for s in whole) * 1000 / len(whole) if whole else None
        )
        found[f"stream_ms_{wave}_mean"] = (
            sum(s.last_byte_s for s in whole) * 1000 / len(whole) if whole else None
        )
    return found


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def ticker(lags: list[float], period_s: float = 0.01) -> None:
    """How late this client's own loop wakes (the worst, in `lags[0]`), until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + period_s
        await asyncio.sleep(period_s)
        lags[0] = max(lags[0], loop.time() - due)


async def run(spec: dict[str, object]) -> dict[str, object]:
    count = int(spec["count"])  # type: ignore[call-overload]
    ramp = float(spec["ramp_s"])  # type: ignore[arg-type]
    until = float(spec.get("until_s", 0))  # type: ignore[arg-type]
    started = time.perf_counter()
    Stream.steady_from = time.time() + ramp + 1
    Stream.started_at = time.time()
    Stream.late_by_second = [0.0] * int(ramp + float(spec["timeout_s"]) + until + 2)  # type: ignore[arg-type]
    Stream.delays = [] if spec.get("events") else None
    lags = [0.0]
    tick = asyncio.ensure_future(ticker(lags))
    try:
        each = kept_slot if spec.get("keepalive") else slot
        per_slot = await asyncio.gather(
            *(each(spec, i * ramp / count, started + until) for i in range(count))
        )
    finally:
        tick.cancel()
    attempts = [outcome for outcomes in per_slot for outcome in outcomes]
    streams = [s for s in attempts if s is not None]
    # in the order the streams were opened: the first `count` are the burst's own
    ttfb = [
        s.ttfb_s * 1000 for s in sorted(streams, key=lambda s: s.started) if s.ttfb_s is not None
    ]
    late = [s.max_late_s * 1000 for s in streams if s.complete]
    late_after = [s.max_late_after_s * 1000 for s in streams if s.complete]
    relayed: dict[str, object] = {}
    if Stream.delays is not None:
        delays = Stream.delays
        whole = [s.last_byte_s * 1000 for s in streams if s.complete and s.last_byte_s]
        relayed = {
            **first_wave(streams, count),
            "relay_events": len(delays),
            "relay_p50_ms": percentile(delays, 0.5) if delays else None,
            "relay_p99_ms": percentile(delays, 0.99) if delays else None,
            "relay_max_ms": max(delays) if delays else None,
            "stream_ms_mean": sum(whole) / len(whole) if whole else None,
            "ttfb_ms_mean": sum(ttfb) / len(ttfb) if ttfb else None,
        }
    return {
        "streams": len(attempts),
        "completed": sum(1 for s in streams if s.complete),
        "events": sum(s.events for s in streams),
        "ttfb_p50_ms": percentile(ttfb, 0.5) if ttfb else None,
        "ttfb_p99_ms": percentile(ttfb, 0.99) if ttfb else None,
        "late_max_ms": max(late) if late else None,
        "late_p99_ms": percentile(late, 0.99) if late else None,
        "late_over_100ms": sum(1 for value in late if value > 100),
        "late_after_ramp_max_ms": max(late_after) if late_after else None,
        "late_after_ramp_over_100ms": sum(1 for value in late_after if value > 100),
        "client_lag_max_ms": lags[0] * 1000,
        "late_by_second_ms": [round(value * 1000) for value in Stream.late_by_second],
        "seconds": time.perf_counter() - started,
        "ttfb_ms": [round(value, 2) for value in ttfb],
        **relayed,
    }


def main() -> None:
    spec = orjson.loads(sys.argv[1])
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one socket per stream
    print(orjson.dumps(uvloop.run(run(spec))).decode())


if __name__ == "__main__":
    main()
