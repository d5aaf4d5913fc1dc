"""tests/asked_again.py: a marked case that fails in a run its process was stopped in is asked
again, and only then; a case that fails unstopped, or fails in every run, still fails. Each
case is a pytest run of its own (as tests/unit/test_running_timeout.py's), whose cases stop
their own process as the machine's timed runs do (a child resumes it after STOPPED_S)."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_running_timeout import run_pytest

PLUGIN = ["-p", "tests.asked_again"]
INI = "markers =\n    asked_again_if_stopped: (registered here too, for the run without the plugin)"

# `answer_within` is a client's wall-clock timer (as the gateway's HTTP client's): the answer
# comes 0.1 s after the call, within the 1 s timer, unless the process is stopped meanwhile.
CASES = """
import asyncio
import os
import subprocess
from pathlib import Path

import pytest

STOPPED_S = {stopped_s}
RUNS = Path("runs.txt")


def stopped_for_a_while() -> None:
    resumer = subprocess.Popen(["sh", "-c", f"sleep {{STOPPED_S}}; kill -CONT {{os.getpid()}}"])
    try:
        os.kill(os.getpid(), 19)  # SIGSTOP
    finally:
        resumer.wait()


def runs(name: str) -> int:
    with RUNS.open("a") as file:
        file.write(name + "\\n")
    return RUNS.read_text().split().count(name)


async def answer_within(stopped: bool, timer_s: float = 1.0) -> str:
    async def answer() -> str:
        await asyncio.sleep(0.05)
        if stopped:
            stopped_for_a_while()
        await asyncio.sleep(0.05)
        return "answered"

    return await asyncio.wait_for(answer(), timer_s)


@pytest.mark.asked_again_if_stopped
def test_stopped_in_its_first_run() -> None:
    assert asyncio.run(answer_within(runs("first") == 1)) == "answered"


@pytest.mark.asked_again_if_stopped
def test_fails_unstopped() -> None:
    runs("unstopped")
    assert asyncio.run(answer_within(False)) == "something else"


@pytest.mark.asked_again_if_stopped(seconds=1)
def test_stopped_in_every_run() -> None:
    runs("every")
    assert asyncio.run(answer_within(True)) == "answered"


@pytest.mark.asked_again_if_stopped
def test_expects_the_timeout_and_gets_the_answer_in_a_stopped_run() -> None:
    runs("timeout")
    with pytest.raises(TimeoutError):  # its failure is pytest's "DID NOT RAISE"
        asyncio.run(answer_within(True, timer_s=5.0))


def test_unmarked_and_stopped() -> None:
    runs("unmarked")
    assert asyncio.run(answer_within(True)) == "answered"
"""


def test_only_a_failure_in_a_stopped_run_is_asked_again(tmp_path: Path) -> None:
    summary, output = run_pytest(tmp_path, INI, CASES.format(stopped_s=1.5), *PLUGIN)
    assert "4 failed, 1 passed" in summary, output
    runs = (tmp_path / "runs.txt").read_text().split()
    assert runs.count("first") == 2, "stopped and failed once, then answered"
    assert runs.count("unstopped") == 1, "a failure without a stop is not asked again"
    assert runs.count("timeout") == 1, "a timeout that did not come is not asked again"
    assert runs.count("unmarked") == 1
    # every run stopped and failing: asked again until its 1 s of running time is spent (a
    # stop counts 0.5 s), then its failure stands
    assert 2 <= runs.count("every") <= 4, runs
    # each run asked again is named in the run's summary
    assert "asked_again_if_stopped: asked again after a stopped run failed" in output
    assert output.count("test_it.py::test_stopped_in_its_first_run: TimeoutError") == 1
    assert output.count("test_it.py::test_stopped_in_every_run: TimeoutError") == (
        runs.count("every") - 1
    )


def test_without_the_plugin_the_stopped_run_fails(tmp_path: Path) -> None:
    """The same cases with the plugin not loaded (never asking again): the first case fails."""
    summary, output = run_pytest(tmp_path, INI, CASES.format(stopped_s=1.5))
    assert "5 failed" in summary, output
    assert (tmp_path / "runs.txt").read_text().split().count("first") == 1
