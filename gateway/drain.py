"""Ending open streams before a shutdown's deadline, so that they are billed and told why.

On SIGTERM Granian's supervisor stops the workers: each stops accepting, lets its requests run,
and is killed `drain_grace_s` later (`workers_kill_timeout`). A stream still open then would be
cut with nothing billed. So `klawd serve` writes the time of the signal into a file
(`$KLAWD_DRAIN_FILE`) before passing the signal on, each worker watches for that file, and
shortly before the kill (`DRAIN_MARGIN_S`, at most half the grace) it ends its open streams: each
gets a final error event (503, "retry"), its relay bills what was generated with status 503, and
the worker can then finish and flush the ledger in time.

A worker whose supervising process is gone (SIGKILLed: nothing passes a signal on) would serve
on, orphaned, holding the port. The same watcher notices (`$KLAWD_SUPERVISOR_PID` is no longer
its parent), announces the drain itself and stops the worker as the supervisor would have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.timer_wheel import TimerWheel

log = logging.getLogger("klawd")

DRAIN_FILE_ENV = "KLAWD_DRAIN_FILE"
SUPERVISOR_PID_ENV = "KLAWD_SUPERVISOR_PID"  # the supervising process, the workers' parent
# `klawd serve`'s temporary directories (gateway/cli.py): the drain file's, and the metrics
# files' when $PROMETHEUS_MULTIPROC_DIR was not given.
DRAIN_DIR_PREFIX = "klawd-drain-"
METRICS_DIR_PREFIX = "klawd-metrics-"
DRAIN = "klawd-drain"  # the cancel message that tells a stream it is ended by the drain
DRAIN_MARGIN_S = 1.0
SHUTDOWN_FLOOR_S = 0.4
WATCH_INTERVAL_S = 0.25


class OpenStreams(set[asyncio.Task[Any]]):
    """The tasks relaying a stream right now (one per open stream), and their keepalive checks
    (one loop timer for all of them: gateway/timer_wheel.py). A set itself: every stream adds
    and discards its task, and the set's own methods are C calls (no Python frame)."""

    __slots__ = ("_keepalives", "ended", "on_send_timeout", "orphaned")

    def __init__(self) -> None:
        super().__init__()
        self._keepalives: TimerWheel | None = None
        # The tasks `end_all` cancelled (filled only by the drain, at shutdown): `drained`.
        self.ended: set[asyncio.Task[Any]] = set()
        self.orphaned = False  # the supervising process died: this worker stops by itself
        # Called once per stream ended by the send deadline (its client stopped reading).
        self.on_send_timeout: Callable[[], None] | None = None

    def keepalives(self) -> TimerWheel:
        """The wheel, made on the app's loop by its first stream (`wheel.loop` is that loop:
        asyncio.get_running_loop() is a getpid() system call on each call in CPython 3.11)."""
        wheel = self._keepalives
        if wheel is None:
            wheel = self._keepalives = TimerWheel(asyncio.get_running_loop())
        return wheel

    def end_all(self) -> int:
        """Cancels every open stream with the DRAIN message; how many there were."""
        tasks = list(self)
        self.ended.update(tasks)
        for task in tasks:
            task.cancel(DRAIN)
        return len(tasks)

    def drained(self, exc: BaseException) -> bool:
        """Whether `exc`, raised in the current task, is the drain's end of it: the DRAIN
        message, or a task the drain cancelled. A task waiting on a future and cancelled twice
        in one loop turn gets the first message: after a deadline's cut in the same turn, the
        drain's cancel arrives bearing the cut's (docs/decisions/0005, thirtieth pass)."""
        if is_drain(exc):
            return True
        return (
            bool(self.ended)
            and isinstance(exc, asyncio.CancelledError)
            and asyncio.current_task() in self.ended
        )


def is_drain(exc: BaseException) -> bool:
    """The DRAIN message (a task the drain ended may bear another: `OpenStreams.drained`)."""
    return isinstance(exc, asyncio.CancelledError) and DRAIN in exc.args


def announce(path: Path, now: float) -> None:
    """In the supervisor, when it is told to stop: the time the drain began."""
    with contextlib.suppress(OSError):
        path.write_text(repr(now), encoding="ascii")


def drain_deadline(signalled_at: float, grace_s: float) -> float:
    """Wall time at which a worker ends its open streams."""
    return signalled_at + grace_s - min(DRAIN_MARGIN_S, grace_s / 2)


def kill_timeout_s(grace_s: float) -> int:
    """How long Granian gives a worker to stop before it kills it (`klawd serve`)."""
    return max(1, math.ceil(grace_s))


def kill_expected_at(grace_s: float) -> float | None:
    """Wall time at which `klawd serve` kills this worker, once told to stop (its drain file
    written before the signal is passed on): the signal's time plus the kill timeout, a little
    early (Granian counts from its own start of the stop). None when not under `klawd serve`
    or not signalled (a test, an embedding program)."""
    named = os.environ.get(DRAIN_FILE_ENV)
    if not named:
        return None
    try:
        signalled_at = float(Path(named).read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None
    return signalled_at + kill_timeout_s(grace_s)


def shutdown_budget_s(grace_s: float) -> float:
    """How long a worker's shutdown may take (`AppState.close`, then the request log's and the
    span exporter's closes: gateway/app.py): what the drain deadline leaves before the kill,
    and at least SHUTDOWN_FLOOR_S (a grace of 0 leaves no margin, but the kill comes
    `max(1, ceil(grace))` s after the signal: gateway/cli.py)."""
    return max(SHUTDOWN_FLOOR_S, min(DRAIN_MARGIN_S, grace_s / 2))


def writes_wait_s(grace_s: float) -> float:
    """How long a worker's shutdown waits for the writes still running (a stream's stored
    response, `AppState.writes`): half of its budget, so that the ledger's flush and the
    store's close get the other half. At a grace of 0 too: no grace means that open streams
    are not waited for, not that what was already written is dropped."""
    return shutdown_budget_s(grace_s) / 2


async def watch(
    streams: OpenStreams,
    grace_s: float,
    path: Path | None = None,
    supervisor: int | None = None,
    on_drain: Callable[[], object] | None = None,
) -> None:
    """In a worker, for its lifetime: waits for the supervisor's drain file, then, at the drain
    deadline, ends every stream still open (and any opened after, until the worker stops).
    `supervisor`: the supervising process's PID; once it is no longer this worker's parent, the
    worker drains and stops by itself. `on_drain`: called once the drain begins, before this
    logs anything (the lifespan's: from then on the log lines go through the shutdown's own
    thread, gateway/shutdown_log.py, so that a stuck log stream cannot hold the drain)."""
    if path is None:
        named = os.environ.get(DRAIN_FILE_ENV)
        if not named:
            return  # not under `klawd serve`: nobody will kill the worker on a deadline
        path = Path(named)
        supervisor = int(os.environ.get(SUPERVISOR_PID_ENV) or 0) or None
    if supervisor != os.getppid():
        # Not its parent now: not one of its workers (the variable inherited by another
        # process), or it died before this worker started (then missed: a moment's window).
        supervisor = None
    gone: int | None = None  # the supervising process, once it is gone
    while True:
        try:
            signalled_at = float(path.read_text(encoding="ascii"))
            break
        except (OSError, ValueError):
            if supervisor is not None and os.getppid() != supervisor:
                gone = supervisor
                break
            await asyncio.sleep(WATCH_INTERVAL_S)
    if on_drain is not None:
        on_drain()
    if gone is not None:
        signalled_at = orphaned(path, gone)
        streams.orphaned = True
    await asyncio.sleep(max(0.0, drain_deadline(signalled_at, grace_s) - time.time()))
    while True:
        ended = streams.end_all()
        if ended:
            log.warning("drain deadline: ended %d open stream(s) before shutdown", ended)
        await asyncio.sleep(WATCH_INTERVAL_S)


def orphaned(path: Path, supervisor: int) -> float:
    """The supervising process died without stopping this worker: the drain begins now (the
    other workers see the same file), and the worker stops as on the supervisor's SIGTERM (no
    new connections, open requests finish or are ended at the drain deadline, the ledger
    flushed). When the drain began."""
    log.error("the supervising process (PID %d) is gone: this worker drains and stops", supervisor)
    now = time.time()
    announce(path, now)
    os.kill(os.getpid(), signal.SIGTERM)
    return now


def remove_leftovers(pid: int) -> None:
    """An orphaned worker at its exit: the supervisor that would have removed `klawd serve`'s
    temporary directories is gone. Removes this worker's metrics files; the last worker out
    (the metrics directory is empty then, `rmdir` succeeds once) removes both directories. A
    metrics directory the operator named is left, with the other workers' files in it."""
    metrics = os.environ.get("PROMETHEUS_MULTIPROC_DIR")  # gateway.cli's MULTIPROC_ENV
    if metrics:
        for own in Path(metrics).glob(f"*_{pid}.db"):  # prometheus-client's files: TYPE_PID.db
            with contextlib.suppress(OSError):
                own.unlink()
        if Path(metrics).name.startswith(METRICS_DIR_PREFIX):
            try:
                os.rmdir(metrics)
            except OSError:
                return  # another worker's files are still there: it is not the last out
    named = os.environ.get(DRAIN_FILE_ENV)
    if named and Path(named).parent.name.startswith(DRAIN_DIR_PREFIX):
        shutil.rmtree(Path(named).parent, ignore_errors=True)
