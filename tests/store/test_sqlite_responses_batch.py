"""The embedded store keeps the Responses API's answers as a group commit
(gateway/store/sqlite_responses.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from gateway.store.base import StoreError
from gateway.store.sqlite import SqliteStore
from tests.live_bound import within
from tests.store.test_responses_store import NOW, stored


async def test_responses_kept_while_the_store_s_thread_is_busy_go_in_one_transaction(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "batch.db")
    await store._run(lambda conn: None)  # connected
    release = threading.Event()
    busy = asyncio.ensure_future(store._run(lambda conn: release.wait(10)))
    commits: list[int] = []
    store._connect().set_trace_callback(lambda sql: commits.append(1) if sql == "COMMIT" else None)
    puts = [asyncio.ensure_future(store.put_response(stored("acct_a", n))) for n in range(10)]
    await asyncio.sleep(0.05)
    assert not any(p.done() for p in puts)  # each waits for its row to be written
    release.set()
    await busy
    await asyncio.gather(*puts)
    assert len(commits) == 1
    assert len(await store.list_responses("acct_a", 100, NOW)) == 10
    await store.close()


async def test_a_failed_batch_is_a_store_error_for_each_of_its_callers(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "failed.db")
    await store._run(lambda conn: conn.execute("DROP TABLE responses"))
    results = await asyncio.gather(
        *(store.put_response(stored("acct_a", n)) for n in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, StoreError) for r in results)
    assert "OperationalError" in str(results[0])
    with pytest.raises(sqlite3.OperationalError):
        store._connect().execute("SELECT 1 FROM responses")
    await store.close()


async def test_a_put_after_the_store_closed_fails_and_leaves_no_batch_behind(
    tmp_path: Path,
) -> None:
    """A put the closed store cannot schedule raises; one after it raises too, rather than
    waiting on a batch that was never written (the review of b450f7c)."""
    store = SqliteStore(tmp_path / "closed.db")
    await store._run(lambda conn: None)
    await store.close()
    for n in range(2):
        with pytest.raises(RuntimeError):
            await within(store.put_response(stored("acct_a", n)), 5)
