"""The SQLite store's executor (gateway/threads.py): jobs in order on one daemon thread, a job
cancelled before it began skipped, as a ThreadPoolExecutor's."""

from __future__ import annotations

import gc
import threading

from gateway.threads import DaemonThreadExecutor


def test_jobs_run_in_order_on_one_daemon_thread_and_a_cancelled_one_is_skipped() -> None:
    executor = DaemonThreadExecutor("klawd-test")
    gate = threading.Event()
    ran: list[str] = []
    first = executor.submit(gate.wait)
    second = executor.submit(ran.append, "second")
    third = executor.submit(ran.append, "third")
    failing = executor.submit(int, "not a number")
    assert second.cancel()  # queued behind the first: never begins
    gate.set()
    assert first.result(10) is True
    assert third.result(10) is None
    assert isinstance(failing.exception(10), ValueError)
    assert ran == ["third"]
    names = {t.name: t.daemon for t in threading.enumerate()}
    assert names.get("klawd-test") is True
    executor.shutdown(wait=True)
    assert "klawd-test" not in {t.name for t in threading.enumerate()}


def test_an_executor_dropped_without_its_shutdown_ends_its_thread() -> None:
    """A store never closed: its executor, once collected, lets its thread end (as a
    ThreadPoolExecutor's does), rather than keeping an idle thread for the process's life."""
    executor = DaemonThreadExecutor("klawd-test-dropped")
    assert executor.submit(int, "1").result(10) == 1
    thread = next(t for t in threading.enumerate() if t.name == "klawd-test-dropped")
    del executor
    gc.collect()
    thread.join(10)
    assert not thread.is_alive()
