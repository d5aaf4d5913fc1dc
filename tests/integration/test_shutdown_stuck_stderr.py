"""The shutdown's log lines and a log stream that takes nothing.

A worker's stderr is a pipe (a container runtime's log driver, `klawd serve` under a
supervisor): when nothing reads it (a collector stalled, a terminal paused) and it is full,
every write to it blocks. Python's logging writes on the caller's thread: for the shutdown's
lines (the ledger's cut, the closes' cuts), the event loop's. A child process here serves one
request with its stderr a pipe the test does not read, filled first, then shuts down; it says
on stdout when its lifespan's shutdown has ended."""

from __future__ import annotations

import select
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHILD = """
import logging, os, sys, threading
from pathlib import Path
from starlette.testclient import TestClient
from gateway.app import create_app
from gateway.settings import load_settings

# (WARNING: not the test client's own lines, which its thread logs at INFO)
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
config = Path(sys.argv[1])
config.write_text(f'[store]\\nurl = "sqlite:///{config.parent}/stuck.db"\\n')
stuck = sys.argv[2] == "stuck"


class Held:
    '''A request log stream that takes nothing until the process ends.'''

    def write(self, text):
        threading.Event().wait()

    def flush(self):
        pass


def fill_stderr():
    '''Writes to stderr's pipe, which nothing reads, until it is full.'''
    os.set_blocking(2, False)
    try:
        while True:
            os.write(2, b"." * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(2, True)


with TestClient(create_app(load_settings(config), environ={})) as client:
    if stuck:  # stderr's pipe filled: the request log's writer and every log line block
        fill_stderr()
    else:  # stderr read: only the request log's stream takes nothing
        client.app_state["klawd_observer"].request_log._stream = Held()
    assert client.get("/healthz").status_code == 200
print("shutdown ended", flush=True)
os._exit(0)
"""


# The drain's line: the app under `klawd serve`'s drain file, one stream open (a task the
# drain ends as it ends a relay's), the drain file written with a deadline long past. The
# drain deadline's `ended 1 open stream(s)` comes while Granian still waits for the streams,
# before the lifespan's shutdown.
DRAINED = (
    CHILD.split("with TestClient")[0]
    + """
import asyncio, time

drain_file = config.parent / "drain"
os.environ["KLAWD_DRAIN_FILE"] = str(drain_file)  # (read by the drain's watcher at start-up)
with TestClient(create_app(load_settings(config), environ={})) as client:
    streams = client.app_state["klawd"].streams

    async def open_stream():
        task = asyncio.get_running_loop().create_task(asyncio.sleep(3600))
        streams.add(task)
        return task

    stream = client.portal.call(open_stream)
    if stuck:
        fill_stderr()
    drain_file.write_text(repr(time.time() - 3600))

    async def ended():
        for _ in range(6000):  # (the watcher looks every 0.25 s; 60 s at most)
            if stream.done():
                return True
            await asyncio.sleep(0.01)
        return False

    if client.portal.call(ended):  # (the loop's thread held by a log line: never answers)
        print("stream ended", flush=True)
print("shutdown ended", flush=True)
os._exit(0)
"""
)


@contextmanager
def run_child(
    tmp_path: Path, stderr: str, script: str = CHILD, said: bytes = b"shutdown ended\n"
) -> Iterator[tuple[subprocess.Popen[bytes], bool]]:
    """The child started, and whether the first line it said is `said` (within 60 s); killed
    and its pipes closed at the end."""
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "klawd.toml"), stderr],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], 60)
        yield child, bool(ready) and child.stdout.readline() == said
    finally:
        child.kill()
        child.wait()
        for pipe in (child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()


@pytest.mark.parametrize("stderr", ["stuck", "read"])
def test_the_shutdown_ends_with_its_log_stream_stuck_and_loses_no_line_when_it_is_not(
    tmp_path: Path, stderr: str
) -> None:
    """Stuck: the request log's close is cut at the budget's end, and its cut line must not
    hold the shutdown (before: it blocked the event loop until the kill; here no line on
    stdout). Read: the same cut line (the request log's own stream stuck) reaches stderr."""
    with run_child(tmp_path, stderr) as (child, ended):
        assert ended, "the shutdown did not end"
        if stderr == "read":
            _, err = child.communicate(timeout=60)
            lines = err.decode().splitlines()
            cut = [line for line in lines if "shutdown: the request log not closed after" in line]
            assert len(cut) == 1, lines
            assert cut[0].startswith("ERROR klawd shutdown: ")


@pytest.mark.parametrize("stderr", ["stuck", "read"])
def test_the_drains_line_holds_no_stream_with_the_log_stream_stuck(
    tmp_path: Path, stderr: str
) -> None:
    """Stuck: the drain deadline ends the open stream and says so; the line must not hold the
    event loop (before: written on the loop's thread, it blocked there, so the stream never
    ended: here no `stream ended`). Read: the line reaches stderr, once (before and after)."""
    with run_child(tmp_path, stderr, DRAINED, b"stream ended\n") as (child, ended):
        assert ended, "the drain's stream did not end"
        if stderr == "read":
            out, err = child.communicate(timeout=60)
            assert out == b"shutdown ended\n"
            lines = err.decode().splitlines()
            drained = [line for line in lines if "drain deadline: ended" in line]
            assert drained == [
                "WARNING klawd drain deadline: ended 1 open stream(s) before shutdown"
            ], lines
