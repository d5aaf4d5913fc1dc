"""The embedded store's write transactions (gateway/store/sqlite_tx.py): all or nothing, and a
connection never left inside one, even when the COMMIT itself fails (a full disk, an I/O error:
SQLite may or may not have rolled back by then)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.store import sqlite_grants
from gateway.store.base import StoreError
from gateway.store.sqlite import SqliteStore
from gateway.store.sqlite_webhooks import _transaction


class CommitFails(sqlite3.Connection):
    """A connection whose next COMMIT fails, as one on a full disk does."""

    failing = True

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT" and self.failing:
            self.failing = False
            raise sqlite3.OperationalError("database or disk is full")
        return super().execute(sql, *args)


def test_a_failed_commit_leaves_no_transaction_open(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "tx.db", isolation_level=None, factory=CommitFails)
    conn.execute("CREATE TABLE t (n INTEGER)")
    with pytest.raises(sqlite3.OperationalError, match="full"):
        _transaction(conn, lambda: conn.execute("INSERT INTO t VALUES (1)"))
    assert not conn.in_transaction  # (before: still open, and the next BEGIN failed)
    _transaction(conn, lambda: conn.execute("INSERT INTO t VALUES (2)"))
    assert conn.execute("SELECT n FROM t").fetchall() == [(2,)]
    conn.close()


async def test_an_account_update_that_fails_halfway_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The credits added and their grant are one transaction: before, the update's `finally`
    committed the credits when the grant's insert failed."""
    store = SqliteStore(tmp_path / "update.db")
    account = await store.create_account("halfway", "free", 1_000)

    def no_grant(*args: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(sqlite_grants, "new_grant", no_grant)
    with pytest.raises(StoreError):
        await store.update_account(account.id, add_credits_micros=5_000)
    monkeypatch.undo()
    found = await store.get_account(account.id)
    assert found is not None and found.credits_micros == 1_000
    updated = await store.update_account(account.id, add_credits_micros=5_000)
    assert updated is not None and updated.credits_micros == 6_000
    await store.close()
