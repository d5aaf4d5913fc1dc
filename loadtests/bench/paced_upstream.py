"""The long-stream run's fake upstream: every answer is the minute-long OpenAI stream, its events
sent on a fixed schedule (start + i * interval), each line its own HTTP chunk, each content delta
stamped with the time it is written.

    python -m loadtests.bench.paced_upstream PORT [--events 60] [--interval 1.0] [--stamp-us]

`--stamp-us`: the stamps in microseconds, not milliseconds (relay_delay.py: a relay's delay per
event is well under a millisecond).

Why not nginx's echo module (the other benches' upstream): `echo_sleep` schedules the next event
relative to nginx's cached time, i.e. the start of the loop iteration that wrote the last one.
Streams whose events were written in the same iteration get the same next time, so at 10,000
streams (one opened every millisecond) they clump into ever larger bursts over the minute, and
the stamps (`$msec`, also the iteration's start) fall ever further behind the writes: with no
server in between, the client saw events up to 90-160 ms late by the minute's end (3,000
streams: 20 ms, flat). Real streams do not drift into lockstep. Here each stream keeps its own
absolute schedule (one timer per event, at start + i * interval), and the stamp is the clock
when its event is written, so lateness measures the hops after the upstream only.

A bare asyncio server on uvloop (HTTP/1.1, keep-alive, chunked answers; the request is read
to its end and otherwise ignored). Prints `ready` once listening; runs until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import uvloop

from loadtests.bench.contenders import LONG_EVENTS, openai_events

STAMP = b"$msec"
HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
)


def chunk(piece: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(piece), piece)


class PacedStream(asyncio.Protocol):
    """One connection: each request read whole is answered with the paced stream."""

    def __init__(
        self, events: list[list[bytes]], interval_s: float, stamp: bytes = b"%.3f"
    ) -> None:
        self.events = events
        self.interval_s = interval_s
        self.stamp = stamp
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.answering = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.answering:
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].lower()
        length = 0
        for line in head.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if len(self.buffer) < end + 4 + length:
            return
        self.buffer = self.buffer[end + 4 + length :]
        self.answering = True
        loop = asyncio.get_running_loop()
        assert self.transport is not None
        self.transport.write(HEAD)
        self.send(loop, loop.time(), 0)

    def send(self, loop: asyncio.AbstractEventLoop, start: float, index: int) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        for piece in self.events[index]:
            if STAMP in piece:
                piece = piece.replace(STAMP, self.stamp % time.time())
            self.transport.write(chunk(piece))
        if index + 1 < len(self.events):
            due = start + (index + 1) * self.interval_s
            self.timer = loop.call_at(due, self.send, loop, start, index + 1)
            return
        self.transport.write(b"0\r\n\r\n")
        self.answering = False
        if self.buffer:  # a next request already arrived on this connection
            self.data_received(b"")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()


async def serve(port: int, events: int, interval_s: float, stamp: bytes = b"%.3f") -> None:
    pieces = [event.splitlines(keepends=True) for event in openai_events(events, stamped=True)]
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: PacedStream(pieces, interval_s, stamp), "127.0.0.1", port, backlog=4096
    )
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--events", type=int, default=LONG_EVENTS)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--stamp-us", action="store_true", help="stamps in microseconds")
    args = parser.parse_args()
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stamp = b"%.6f" if args.stamp_us else b"%.3f"
    uvloop.run(serve(args.port, args.events, args.interval, stamp))


if __name__ == "__main__":
    main()
