"""A case that fails in a run this process was stopped in is asked again (the marker
`asked_again_if_stopped`).

The gateway's timers and its HTTP client's (connect, read, headers: 0.2-5 s in the tests) are
the event loop's, on the wall clock, as they must be in production. A machine stopped longer
than such a timer (this machine's timed runs SIGSTOP every other process for minutes; a noisy
CI host) spends it: on resuming, the timer and the answer it waits for are due in one loop
turn, the timer first, and a case that expects the answer fails though nothing is wrong
(decision 0001, "The suite on a busy machine"). A run that `tests.live_bound.Stops` saw
stopped proves nothing when it fails, so a marked case is run again, for `seconds` of
running time in all (ASKED_AGAIN_S unless the marker says), and its last run decides.

Asked again only after a failure that is an Exception (an assertion, a timeout), never after
pytest's own outcomes: the per-test bound's cut, a skip, `pytest.raises`' "DID NOT RAISE" (a
case that expects a timeout and got the answer is not asked again, stopped or not). A stop
spends timers, it cannot bring an answer that a broken client would not, so a passing run
stands even if stopped; that is also what lets a case pass under long stops at all (one longer
than the gaps between the stops is never run unstopped). A failure without a stop stands at
once.
"""

from __future__ import annotations

import pytest

from tests.live_bound import Stops

MARKER = "asked_again_if_stopped"
ASKED_AGAIN_S = 30.0
_ASKED = pytest.StashKey[list[str]]()  # one line per run asked again, for the summary


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(seconds={ASKED_AGAIN_S:g}): a failure in a run this process was stopped in "
        "is asked again, for that many seconds of running time (tests/asked_again.py)",
    )
    config.stash[_ASKED] = []


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    marker = pyfuncitem.get_closest_marker(MARKER)
    if marker is None:
        return None
    seconds = float(marker.kwargs.get("seconds", ASKED_AGAIN_S))
    # what pytest's own pytest_pyfunc_call passes (an async case's `obj` is pytest-asyncio's
    # synchronous wrapper by now: each call runs the coroutine anew on the test's loop)
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    ran_s = 0.0
    while True:
        with Stops() as stops:
            try:
                pyfuncitem.obj(**arguments)
            except Exception as exc:
                failure: Exception | None = exc
            else:
                failure = None
        ran_s += stops.ran_s
        if failure is None:
            return True
        if not stops.seen or ran_s > seconds:
            raise failure
        pyfuncitem.config.stash[_ASKED].append(f"{pyfuncitem.nodeid}: {failure!r}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    asked = terminalreporter.config.stash.get(_ASKED, [])
    if asked:
        terminalreporter.section(f"{MARKER}: asked again after a stopped run failed")
        for line in asked:
            terminalreporter.write_line(line)
