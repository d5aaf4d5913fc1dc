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


with TestClient(create_app(load_settings(config), environ={})) as client:
    if stuck:  # stderr's pipe filled: the request log's writer and every log line block
        os.set_blocking(2, False)
        try:
            while True:
                os.write(2, b"." * 4096)
        except BlockingIOError:
            pass
        os.set_blocking(2, True)
    else:  # stderr read: only the request log's stream takes nothing
        client.app_state["klawd_observer"].request_log._stream = Held()
    assert client.get("/healthz").status_code == 200
print("shutdown ended", flush=True)
os._exit(0)
"""


def run_child(tmp_path: Path, stderr: str) -> tuple[subprocess.Popen[bytes], bool]:
    """The child started, and whether it said its shutdown ended (within 60 s)."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "klawd.toml"), stderr],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], 60)
    return child, bool(ready) and child.stdout.readline() == b"shutdown ended\n"


@pytest.mark.parametrize("stderr", ["stuck", "read"])
def test_the_shutdown_ends_with_its_log_stream_stuck_and_loses_no_line_when_it_is_not(
    tmp_path: Path, stderr: str
) -> None:
    """Stuck: the request log's close is cut at the budget's end, and its cut line must not
    hold the shutdown (before: it blocked the event loop until the kill; here no line on
    stdout). Read: the same cut line (the request log's own stream stuck) reaches stderr."""
    child, ended = run_child(tmp_path, stderr)
    try:
        assert ended, "the shutdown did not end"
        if stderr == "read":
            _, err = child.communicate(timeout=60)
            lines = err.decode().splitlines()
            cut = [line for line in lines if "shutdown: the request log not closed after" in line]
            assert len(cut) == 1, lines
            assert cut[0].startswith("ERROR klawd shutdown: ")
    finally:
        child.kill()
        child.wait()
        for pipe in (child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()
