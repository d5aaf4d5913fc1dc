"""Bounds on a test's waits (a hang's guard) that count only the time this process ran.

A wall-clock bound (`asyncio.wait_for(main(), 30)`, an HTTP client's 30 s read timeout) is
tripped by a machine that is stopped rather than by a hang: the timed benchmark runs of this
machine stop every other process (SIGSTOP) for up to minutes, and a wait that began before the
stop has its 30 s gone when the processes resume, though the app would answer in milliseconds
(docs/decisions/0011, twenty-sixth pass: each failure seen came with such a stop). Here the
bound is counted in ticks of `TICK_S`: a gap between two ticks longer than `MOST_PER_TICK_S`
(this process was stopped, or not scheduled) counts as `MOST_PER_TICK_S`, so a hang is still
cut after about `seconds` of running, and a stop of any length costs at most one tick's worth.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

TICK_S = 0.1
MOST_PER_TICK_S = 0.5


class Ran:
    """The running time counted since it was made, tick by tick (`tick()`: the total)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._last = clock()
        self.seconds = 0.0

    def tick(self) -> float:
        now = self._clock()
        self.seconds += min(now - self._last, MOST_PER_TICK_S)
        self._last = now
        return self.seconds


async def within(awaitable: Awaitable[T], seconds: float) -> T:
    """`asyncio.wait_for(awaitable, seconds)`, `seconds` of this process's running time."""
    task = asyncio.ensure_future(awaitable)
    ran = Ran(asyncio.get_running_loop().time)
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=TICK_S)
            if not task.done() and ran.tick() > seconds:
                raise TimeoutError(f"not done within {seconds:g} s of running time")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
    return task.result()


@contextlib.asynccontextmanager
async def running_timeout(seconds: float) -> AsyncIterator[None]:
    """`asyncio.timeout(seconds)` (the block cancelled, TimeoutError raised) after `seconds` of
    this process's running time: the loop's timeout is pushed on every TICK_S by what ran. On
    resuming from a stop the tick is due before the timeout (earlier in the loop's heap) and
    pushes it on in the same turn, so a stop of any length costs one tick's worth."""
    loop = asyncio.get_running_loop()
    ran = Ran(loop.time)
    ticking: asyncio.TimerHandle | None = None
    async with asyncio.timeout(seconds) as bound:

        def tick() -> None:
            nonlocal ticking
            bound.reschedule(loop.time() + max(0.0, seconds - ran.tick()))
            ticking = loop.call_later(TICK_S, tick)

        ticking = loop.call_later(TICK_S, tick)
        try:
            yield
        finally:
            ticking.cancel()


def call_within(call: Callable[[], T], seconds: float) -> T:
    """`call()` in a thread of its own, waited for `seconds` of this process's running time (a
    call still running then is left to finish alone: the test fails with TimeoutError)."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        future = pool.submit(call)
        ran = Ran(time.monotonic)
        while True:
            try:
                return future.result(timeout=TICK_S)
            except concurrent.futures.TimeoutError:
                if ran.tick() > seconds:
                    raise TimeoutError(f"not done within {seconds:g} s of running time") from None
    finally:
        pool.shutdown(wait=False)


def running_time_reads(
    read: Callable[[Any, int, float | None], bytes], timed_out: type[Exception]
) -> Callable[..., bytes]:
    """An httpcore sync stream's `read(max_bytes, timeout)` (what every httpx client and
    official SDK of the tests reads with: httpcore, or httpcore2 under the SDKs' httpx2), whose
    timeout is `timeout` seconds of this process's running time; `timed_out`: the library's
    ReadTimeout. A client's `timeout=20` is the test's hang guard, and a machine stopped longer
    than that with the gateway (one process group, SIGCONTed together) would otherwise fail it
    the moment both resume, before the gateway has written the answer it owes."""

    def read_counting_running_time(
        stream: Any, max_bytes: int, timeout: float | None = None
    ) -> bytes:
        if timeout is None or timeout <= TICK_S:
            return read(stream, max_bytes, timeout)
        ran = Ran(time.monotonic)
        while True:
            try:
                return read(stream, max_bytes, TICK_S)
            except timed_out:
                if ran.tick() > timeout:
                    raise

    return read_counting_running_time


def running_time_reads_async(
    read: Callable[[Any, int, float | None], Awaitable[bytes]], timed_out: type[Exception]
) -> Callable[..., Awaitable[bytes]]:
    """`running_time_reads` for an httpcore async stream (httpx.AsyncClient's): each slice's
    receive is cancelled at TICK_S and waited for again, the data staying in the stream's
    buffer."""

    async def read_counting_running_time(
        stream: Any, max_bytes: int, timeout: float | None = None
    ) -> bytes:
        if timeout is None or timeout <= TICK_S:
            return await read(stream, max_bytes, timeout)
        ran = Ran(time.monotonic)
        while True:
            try:
                return await read(stream, max_bytes, TICK_S)
            except timed_out:
                if ran.tick() > timeout:
                    raise

    return read_counting_running_time


def recv(sock: socket.socket, size: int, seconds: float) -> bytes:
    """`sock.recv(size)` waited for `seconds` of this process's running time (TimeoutError
    then), the socket's own timeout kept. A raw socket's `settimeout(20)` is the wall clock's:
    a test stopped with the server it reads from (one process group, or one process) resumes
    with it spent, before the server has written what it owes."""
    kept = sock.gettimeout()
    ran = Ran(time.monotonic)
    sock.settimeout(TICK_S)
    try:
        while True:
            try:
                return sock.recv(size)
            except TimeoutError:
                if ran.tick() > seconds:
                    raise TimeoutError(f"nothing within {seconds:g} s of running time") from None
    finally:
        sock.settimeout(kept)


def wait_exit(process: subprocess.Popen[Any], seconds: float) -> int:
    """`process.wait(timeout=seconds)` over `seconds` of this process's running time: a child
    stopped with the test (SIGTERMed just before, say) has not exited the moment both resume."""
    for _ in polls(seconds, 0.05):
        if (code := process.poll()) is not None:
            return code
    raise subprocess.TimeoutExpired(process.args, seconds)


class Stops:
    """Whether this process was stopped (or not run) longer than MOST_PER_TICK_S while a block
    ran (`seen`), and the block's running time (`ran_s`, a stop counting MOST_PER_TICK_S): a
    thread of its own ticks every TICK_S and sees the gap. For a test that races a timer of the
    gateway's against the fake upstream's pace (the gateway's timers are wall-clock, and a stop
    spends them): a run that was stopped proves nothing either way (tests/asked_again.py)."""

    def __init__(self) -> None:
        self.seen = False
        self.ran_s = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        ran = Ran(time.monotonic)
        last = time.monotonic()
        while True:
            done = self._done.wait(TICK_S)
            now = time.monotonic()
            if now - last > MOST_PER_TICK_S:
                self.seen = True
            self.ran_s = ran.tick()
            if done:
                return
            last = now

    def __enter__(self) -> Stops:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()


def running_deadline(seconds: float) -> Callable[[], bool]:
    """A polling loop's `deadline = time.monotonic() + seconds`, in this process's running time:
    the call says whether `seconds` have passed (each call is a tick of a `Ran`: a stop counts
    MOST_PER_TICK_S, as in `polls`)."""
    ran = Ran(time.monotonic)
    return lambda: ran.tick() > seconds


def polls(seconds: float, every_s: float) -> Iterator[int]:
    """A polling loop's turns (`for _ in polls(30, 0.05): if done(): break`), `every_s` apart,
    until `seconds` of this process's running time passed: a hang's guard, not a count of turns
    whose total a loaded machine's slow requests stretch past what the condition needs."""
    ran = Ran(time.monotonic)
    turn = 0
    while True:
        yield turn
        if ran.tick() > seconds:
            return
        time.sleep(every_s)
        turn += 1


async def polls_async(seconds: float, every_s: float) -> AsyncIterator[int]:
    """`polls` on an event loop (its sleeps are the loop's)."""
    ran = Ran(time.monotonic)
    turn = 0
    while True:
        yield turn
        if ran.tick() > seconds:
            return
        await asyncio.sleep(every_s)
        turn += 1
