"""What `send_event_stream` and its watch cost a stream, counted: callgrind's instructions per
stream of a stepped source relayed through it as the routes relay one (`send_route_stream`'s
arguments: the app's open streams, a keepalive, a send deadline, `last`), with a send that is
done at once and a receive that never answers (Granian's, while the client stays).

    .venv/bin/python -m loadtests.bench.watch_cost [--before DIR] [--shapes static,chunked]

Shapes: `static`, one piece that is its last, at hand (the chat route's static body: the
stream never waits, so its watch is made and dropped unarmed); `chunked`, 50 pieces, the first
at hand, each other arriving at a turn of the loop of its own (the watch is armed at the
first wait; the source hands the pieces in between to `deliver`, as the HTTP client's reader
does, the last to the stream's step). Each shape runs under valgrind twice, N and 6 N streams
in one uvloop task with a turn of the loop after each (`PYTHONHASHSEED=0`, no .pyc written,
`setarch -R`), counting only what runs inside the loop (`--toggle-collect` on uvloop's
`run_until_complete`: the start-up moves by millions between runs); per stream = the
difference / 5 N. `--before DIR`: another checkout's `gateway` package (with its built
`_core`), counted in the same run. The keepalive wheel follows wall time, which callgrind
stretches: counts spread by tens of instructions between runs.
Decision 0011, issue 19zzv.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

STREAMS = {"static": 1_000, "chunked": 200}  # N per shape (and 6 N)
PIECES = 50  # the chunked stream's
# Only what runs inside the loop is counted: the start-up (imports) moves by millions of
# instructions between runs of one tree, hundreds a stream.
RUN_UNTIL_COMPLETE = "__pyx_pf_6uvloop_4loop_4Loop_44run_until_complete"
PIECE = b'data: {"choices":[{"delta":{"content":"hello"}}]}\n\n'


def run_streams(shape: str, streams: int) -> None:
    """The measured program (run under valgrind with `--streams`)."""
    import asyncio

    import uvloop

    from gateway.api.streaming import KEEPALIVE, Drain, Stepped, send_event_stream
    from gateway.drain import OpenStreams

    pieces = 1 if shape == "static" else PIECES

    class Source(Stepped):
        """`pieces` pieces: the first at hand, each next one at the loop's next turn,
        delivered while the stream waits when it may be (not the last)."""

        __slots__ = ("deliver", "left", "loop", "ready", "waiter")

        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            self.step = self._step
            self.arrival = self._arrival
            self.edit = None
            self.loop = loop
            self.left = pieces - 1  # still to arrive
            self.ready: bytes | None = PIECE
            self.waiter: asyncio.Future[None] | None = None
            self.deliver: object = None

        def _step(self) -> bytes | None:
            ready = self.ready
            if ready is not None:
                self.ready = None
                return ready
            return None if self.left else b""

        def _arrival(self) -> asyncio.Future[None]:
            waiter = self.waiter = self.loop.create_future()
            self.loop.call_soon(self._arrive)
            return waiter

        def _arrive(self) -> None:
            waiter = self.waiter
            assert waiter is not None
            self.left -= 1
            deliver = self.deliver
            if self.left and callable(deliver) and deliver(PIECE, waiter):
                if not waiter.done():  # sent: the stream still waits for the next one
                    self.loop.call_soon(self._arrive)
                return
            self.ready = PIECE
            waiter.set_result(None)

        def finished(self) -> bool:  # (`last`: the piece just taken was the last)
            return self.ready is None and not self.left

        def failed(self, exc: Exception) -> bytes:
            raise exc

        def deliver_to(self, deliver: object) -> None:
            self.deliver = deliver

        async def close(self, whole: bool, drained: bool) -> None:
            pass

    async def send(message: object) -> None:
        pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        never: asyncio.Future[object] = loop.create_future()
        drain = Drain(OpenStreams(), b"")
        for _ in range(streams):
            source = Source(loop)
            await send_event_stream(
                lambda: never,  # type: ignore[arg-type,return-value]
                send,
                [(b"x-klawd-model", b"openai/gpt-4-turbo")],
                source,
                15.0,
                KEEPALIVE,
                drain,
                source.finished,
                60.0,
            )
            # The loop turns between streams, as it does between requests (a stream's arming
            # call, if still queued, runs or is dropped there: counted as the stream's).
            await asyncio.sleep(0)

    uvloop.run(main())


def count(shape: str, streams: int, tree: str | None) -> int:
    """valgrind's instruction total for one run of `streams` streams."""
    from loadtests.bench.measure import callgrind_total  # (here: the counted child need not)

    arguments = ["loadtests.bench.watch_cost", "--shape", shape, "--streams", str(streams)]
    if tree:
        arguments += ["--tree", tree]
    return callgrind_total(
        arguments, ["--collect-atstart=no", f"--toggle-collect={RUN_UNTIL_COMPLETE}"]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="another checkout, counted in the same run")
    parser.add_argument("--shapes", default="static,chunked")
    parser.add_argument("--tree", help=argparse.SUPPRESS)  # the measured run's checkout
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--streams", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tree:
        sys.path.insert(0, str(Path(args.tree).resolve()))
    if args.streams is not None:
        run_streams(args.shape, args.streams)
        return
    trees = [args.before, None] if args.before else [None]
    for shape in args.shapes.split(","):
        small = STREAMS[shape]
        for tree in trees:
            low, high = count(shape, small, tree), count(shape, 6 * small, tree)
            per = (high - low) / (5 * small)
            print(f"{shape:8s} {tree or 'this checkout':30s} {per:9.0f} instructions a stream")


if __name__ == "__main__":
    main()
