"""A process whose SQLite store is stuck in a call exits anyway: the store's thread is a daemon.

Another connection holds the file locked (`BEGIN EXCLUSIVE`, as the `klawd` CLI or a backup
may) while the store's thread waits in its busy timeout. Before, the thread was a
ThreadPoolExecutor's, which the interpreter joins at its exit: the process's exit waited until
the call ended (the busy timeout; a disk that stalls: for good), after the shutdown had given
up on the store and logged what it left."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

# The child: the store made and connected, then told (a line on stdin) to run one call on the
# store's thread with the store's connection; that call says when it has begun waiting for the
# lock and when it has ended. The child's main returns once the call has begun.
CHILD = """
import asyncio, sys, threading
from pathlib import Path
from gateway.store.sqlite import SqliteStore

async def main():
    store = SqliteStore(Path(sys.argv[1]))
    await store.usage("acct_exit", "2026-12-06", "2026-12-06")  # connected: the schema made
    print("ready", flush=True)
    sys.stdin.readline()
    began = threading.Event()

    def write(conn):
        began.set()
        try:
            conn.execute("BEGIN IMMEDIATE")  # waits on the test's lock
            conn.execute("ROLLBACK")
        finally:
            print("ended", flush=True)

    call = asyncio.ensure_future(store._run(write))
    await asyncio.get_running_loop().run_in_executor(None, began.wait)
    print("waiting", flush=True)
    call.cancel()  # (the loop's end would: the thread's call runs on)

asyncio.run(main())
"""


def test_a_store_call_waiting_on_a_held_lock_does_not_hold_the_process_s_exit(
    tmp_path: Path,
) -> None:
    path = tmp_path / "exit.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    assert child.stdin is not None and child.stdout is not None
    holder = None
    try:
        assert child.stdout.readline() == "ready\n"
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        child.stdin.write("go\n")
        child.stdin.flush()
        out, _ = child.communicate(timeout=60)  # the lock is held until the child has exited
        assert child.returncode == 0
        assert out == "waiting\n", "the exit waited for the store's call to end"
    finally:
        if child.returncode is None:
            child.kill()
            child.wait()
        if holder is not None:
            holder.execute("ROLLBACK")
            holder.close()
