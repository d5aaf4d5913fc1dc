"""Helper threads (the SQLite store's, the request log's writer) run behind the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

BACKGROUND_NICE = 19


async def ended_within(call: Callable[[], None], seconds: float, name: str) -> bool:
    """Runs `call` on a daemon thread of its own, waiting at most `seconds`: whether it ended
    (its exception is raised). Cut, it runs on while the process lives, and the interpreter's
    exit does not wait for it (`asyncio.to_thread`'s threads are joined there)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def end(error: BaseException | None) -> None:
        if done.done():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def run() -> None:
        error = None
        try:
            call()
        except BaseException as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # (the loop closed meanwhile)
            loop.call_soon_threadsafe(end, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    await asyncio.wait({done}, timeout=seconds)
    if done.done():
        done.result()
        return True
    done.add_done_callback(lambda late: late.exception())  # (its error, if any, is not raised)
    return False


def behind_the_event_loop() -> None:
    """Called first thing in a helper thread: it yields the CPU to the event loop whenever both
    want it (Linux: a thread's own nice value; elsewhere nothing). On a worker given one core,
    a ledger batch or a burst of log lines would otherwise take whole time slices from the
    requests in flight (`python -m loadtests.bench.side_by_side --measures lat --seconds 3`:
    added latency p99 at 1 connection 2.1 -> 1.3 ms)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


class DaemonThreadExecutor(Executor):
    """Runs the jobs submitted, in order, on one thread of its own that the interpreter's exit
    does not wait for (a daemon), started at the first job. A ThreadPoolExecutor's threads are
    joined at exit: one stuck in a call that never returns (a SQLite file another process holds
    locked, a disk that stalls) held the process's exit after its shutdown had given up on it.
    A job whose future was cancelled before it began is skipped, as there."""

    def __init__(self, name: str, initializer: Callable[[], None] | None = None) -> None:
        self._name = name
        self._initializer = initializer
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._shut = False

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._thread is None:
                # The thread holds the queue, not the executor: one dropped without its
                # shutdown (a store never closed) ends its thread once collected.
                serve = (self._jobs, self._initializer)
                self._thread = threading.Thread(
                    target=_serve, args=serve, name=self._name, daemon=True
                )
                self._thread.start()
                weakref.finalize(self, self._jobs.put, None)
            self._jobs.put((future, functools.partial(fn, *args, **kwargs)))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shut = True
            thread = self._thread
            if cancel_futures:
                with contextlib.suppress(queue.Empty):
                    while True:
                        job = self._jobs.get_nowait()
                        if job is not None:
                            job[0].cancel()
            if thread is not None:
                self._jobs.put(None)  # (the thread ends at the first)
        if wait and thread is not None:
            thread.join()


_Job = tuple["Future[Any]", Callable[[], Any]]


def _serve(jobs: queue.SimpleQueue[_Job | None], initializer: Callable[[], None] | None) -> None:
    """A DaemonThreadExecutor's thread: its jobs, in order, until a None."""
    if initializer is not None:
        initializer()
    while (job := jobs.get()) is not None:
        future, call = job
        del job
        if future.set_running_or_notify_cancel():
            try:
                result = call()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
                del result
        del future, call
