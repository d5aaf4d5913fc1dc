"""The suite's per-test bound (pytest-timeout's `timeout`) counted in running time.

pytest-timeout's signal method arms SIGALRM on the wall clock: the timed benchmark runs of this
machine stop every other process (SIGSTOP) for up to minutes, and a test that was running
across such a stop (a gateway or a redis-server starting in a fixture, most often) lost its
120 s though it would have passed. This plugin implements pytest-timeout's
`pytest_timeout_set_timer` / `pytest_timeout_cancel_timer` hooks instead: a thread counts the
test's running time (tests/live_bound.Ran: a stop counts at most `MOST_PER_TICK_S`) and sends
the main thread SIGALRM once `timeout` seconds of it have passed. The rest is pytest-timeout's
signal method as it was: the whole protocol (fixtures' setup and teardown included) is bounded,
the stacks of the other threads are printed, the test fails and the run goes on.

A wall-clock backstop (ini `timeout_wall_backstop`, seconds) stays armed beside it, on the same
SIGALRM: a test stuck where its counting thread cannot run still ends. The `thread` method (and
a test run outside the main thread) is left to pytest-timeout's own timer.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType
from typing import Any

import pytest
from pytest_timeout import dump_stacks, is_debugging

from tests.live_bound import TICK_S, Ran

BACKSTOP_INI = "timeout_wall_backstop"
_BOUND = pytest.StashKey["RunningTimeBound"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        BACKSTOP_INI,
        "seconds of wall-clock time after which a test is cut whatever its running time "
        "(pytest-timeout's `timeout` counts running time: tests/running_timeout.py)",
        default="1800",
    )


def pytest_report_header(config: pytest.Config) -> str:
    backstop = float(config.getini(BACKSTOP_INI))
    return f"timeout counted in running time; wall-clock backstop: {backstop:g} s"


class RunningTimeBound:
    """Fails the running test (SIGALRM in the main thread, pytest-timeout's signal method) after
    `timeout_s` seconds of this process's running time or `backstop_s` of the wall clock."""

    def __init__(self, item: pytest.Item, settings: Any, backstop_s: float) -> None:
        self._item = item
        self._settings = settings
        self._backstop_s = backstop_s
        self._ran_out = False
        self._done = threading.Event()
        self._main = threading.main_thread().ident
        signal.signal(signal.SIGALRM, self._cut)
        signal.setitimer(signal.ITIMER_REAL, backstop_s)
        self._counter = threading.Thread(
            target=self._count, name=f"running-time bound of {item.nodeid}", daemon=True
        )
        self._counter.start()

    def _count(self) -> None:
        ran = Ran(time.monotonic)
        while not self._done.wait(TICK_S):
            if ran.tick() > self._settings.timeout:
                self._ran_out = True
                assert self._main is not None
                signal.pthread_kill(self._main, signal.SIGALRM)
                return

    def _cut(self, signum: int, frame: FrameType | None) -> None:
        __tracebackhide__ = True
        if self._done.is_set():  # a signal sent as the test ended: nothing left to cut
            return
        if not self._settings.disable_debugger_detection and is_debugging():
            return
        terminal = self._item.config.get_terminal_writer()
        terminal.sep("+", title="Timeout")
        dump_stacks(terminal)
        terminal.sep("+", title="Timeout")
        if self._ran_out:
            bound = f"{self._settings.timeout:g} s of running time"
        else:
            bound = f"{self._backstop_s:g} s of wall-clock time, the backstop"
        pytest.fail(f"Timeout (>{bound}) from tests/running_timeout.py")

    def cancel(self) -> None:
        self._done.set()
        self._counter.join()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    if settings.method != "signal" or threading.current_thread() is not threading.main_thread():
        return None  # pytest-timeout's own timer
    backstop_s = float(item.config.getini(BACKSTOP_INI))
    item.stash[_BOUND] = RunningTimeBound(item, settings, backstop_s)
    return True


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> bool | None:
    bound = item.stash.get(_BOUND, None)
    if bound is None:
        return None  # not ours (or never armed): pytest-timeout's own
    del item.stash[_BOUND]
    bound.cancel()
    return True
