"""tests/running_timeout.py: the suite's per-test timeout counts running time (a hang is still
cut, with the threads' stacks, in a fixture as in the test; a stop of the process longer than
the timeout is not), and a wall-clock backstop stays. Each case is a pytest run of its own, in
a directory of its own, with a small timeout in its ini."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PLUGIN = ["-p", "tests.running_timeout"]
# -rN: no short summary, whose lines repeat each failure's message only when the terminal is
# wide enough to hold them (CI's is): the counts below are of the failures' own sections.
PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:asyncio", "-rN"]

HANGS = """
import threading

import pytest


def hang() -> None:
    threading.Event().wait()


@pytest.fixture
def setup_hangs():
    hang()
    yield


@pytest.fixture
def teardown_hangs():
    yield
    hang()


def test_hangs():
    threading.Thread(target=hang, name="a-helper-thread", daemon=True).start()
    hang()


def test_its_setup_hangs(setup_hangs):
    pass


def test_its_teardown_hangs(teardown_hangs):
    pass


def test_after_them():
    pass
"""

# The test's own process stopped (SIGSTOP) STOP_S seconds by a helper process, then resumed:
# as the machine's timed runs stop the suite.
STOPPED = """
import os
import subprocess
import sys

STOPPER = (
    "import os, signal, sys, time\\n"
    "pid = int(sys.argv[1])\\n"
    "time.sleep(0.3)\\n"
    "os.kill(pid, signal.SIGSTOP)\\n"
    "time.sleep(float(sys.argv[2]))\\n"
    "os.kill(pid, signal.SIGCONT)\\n"
)


def test_stopped_longer_than_its_timeout():
    stopper = subprocess.Popen([sys.executable, "-c", STOPPER, str(os.getpid()), "{stop_s}"])
    assert stopper.wait() == 0
"""


def run_pytest(directory: Path, ini: str, test: str, *options: str) -> tuple[str, str]:
    """The summary line and the whole output of `pytest` over `test` under `ini`."""
    (directory / "pytest.ini").write_text(f"[pytest]\n{ini}\n")
    (directory / "test_it.py").write_text(test)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_TIMEOUT", None)
    done = subprocess.run(
        [*PYTEST, *options, "test_it.py"],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip().splitlines()[-1], done.stdout + done.stderr


def test_a_hung_test_or_fixture_is_cut_after_its_running_time_with_the_stacks(
    tmp_path: Path,
) -> None:
    summary, output = run_pytest(
        tmp_path, "timeout = 1\ntimeout_wall_backstop = 3600", HANGS, *PLUGIN
    )
    assert "1 failed, 2 passed, 2 errors" in summary, output
    assert output.count("Timeout (>1 s of running time) from tests/running_timeout.py") == 3
    assert "Stack of a-helper-thread" in output, "the other threads' stacks are printed"
    assert "wall-clock backstop: 3600 s" in output


def test_a_test_stopped_longer_than_its_timeout_passes(tmp_path: Path) -> None:
    ini = "timeout = 3\ntimeout_wall_backstop = 3600"
    stopped = STOPPED.format(stop_s=5)
    summary, output = run_pytest(tmp_path, ini, stopped, *PLUGIN)
    assert "1 passed" in summary, output
    # pytest-timeout's own bound (the wall clock's) fails the same run
    summary, output = run_pytest(tmp_path, ini, stopped)
    assert "1 failed" in summary, output
    assert "Timeout (>3.0s) from pytest-timeout" in output


def test_the_wall_clock_backstop_still_cuts(tmp_path: Path) -> None:
    ini = "timeout = 100\ntimeout_wall_backstop = 2"
    summary, output = run_pytest(tmp_path, ini, STOPPED.format(stop_s=4), *PLUGIN)
    assert "1 failed" in summary, output
    assert "Timeout (>2 s of wall-clock time, the backstop)" in output
