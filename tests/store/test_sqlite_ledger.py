"""The embedded store's ledger rows: every column of every settled entry, whatever the batch's size
(the entries go in by multi-row INSERTs of 62, 16, 4 and 1 rows, the ids already in the ledger
are looked up by statements of 256, 64, 16, 4 and 1 ids)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from msgspec.structs import astuple

from gateway.metrics import Metrics
from gateway.settings import load_settings
from gateway.state import build_state
from gateway.store.base import UsageEntry, open_store
from gateway.store.sqlite import SqliteStore


def entry(account_id: str, n: int) -> UsageEntry:
    return UsageEntry(
        id=f"use_{n:06d}",
        ts=1_795_000_000.25 + n,
        day=f"2026-11-{10 + n % 20}",
        account_id=account_id,
        key_id=f"key_{n % 3}" if n % 5 else "",
        model=f"m/{n % 4}",
        provider=f"p{n % 2}",
        prompt_tokens=10 * n,
        completion_tokens=n,
        images=n % 2,
        cost_micros=n % 7,
        reserved_micros=n % 11,
        latency_ms=n,
        status=200 if n % 9 else 499,
        request_id=f"req_{n}",
        stream=bool(n % 2),
        key_reserved_micros=0,
    )


@pytest.mark.parametrize("sizes", [[1], [3, 4], [64], [85, 150], [64, 16, 4, 1, 0, 69]])
async def test_every_column_of_every_entry_is_in_the_ledger(
    tmp_path: Path, sizes: list[int]
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'klawd.db'}")
    try:
        account = await store.create_account("a", "free", 1_000_000)
        entries = [entry(account.id, n) for n in range(sum(sizes))]
        start = 0
        for size in sizes:
            await store.settle(entries[start : start + size])
            start += size
        await store.settle(entries[:70])  # replayed: nothing twice
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "klawd.db") as conn:
        rows = conn.execute(
            "SELECT id, ts, day, account_id, key_id, model, provider, prompt_tokens,"
            " completion_tokens, images, cost_micros, reserved_micros, latency_ms, status,"
            " request_id, stream FROM usage_ledger ORDER BY id"
        ).fetchall()
    assert rows == [astuple(e)[:16] for e in entries]


async def test_a_batch_mixing_settled_and_new_entries_settles_each_new_one_once(
    tmp_path: Path,
) -> None:
    """Entries already in the ledger at every place of a batch of 341 (256 + 64 + 16 + 4 + 1 ids
    looked up): none is charged again, every new one is charged once."""
    store = open_store(f"sqlite:///{tmp_path / 'klawd.db'}")
    try:
        account = await store.create_account("a", "free", 1_000_000)
        entries = [entry(account.id, n) for n in range(341)]
        await store.settle(entries[1::2])
        await store.settle(entries)
        after = await store.get_account(account.id)
    finally:
        await store.close()
    assert after is not None
    assert after.credits_micros == 1_000_000 - sum(e.cost_micros for e in entries)
    with sqlite3.connect(tmp_path / "klawd.db") as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM usage_ledger ORDER BY id")]
    assert ids == [e.id for e in entries]


async def test_a_batch_settles_within_the_variable_limit_of_sqlite_before_3_32(
    tmp_path: Path,
) -> None:
    """SQLite before 3.32 (Ubuntu 20.04's 3.31, RHEL 8's 3.26) binds at most 999 variables a
    statement: every insert and lookup of a batch stays under it."""
    store = open_store(f"sqlite:///{tmp_path / 'klawd.db'}")
    assert isinstance(store, SqliteStore)
    try:
        await store._run(lambda conn: conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999))
        account = await store.create_account("a", "free", 1_000_000)
        entries = [entry(account.id, n) for n in range(300)]
        await store.settle(entries[:150])
        await store.settle(entries)  # the first 150 looked up, the rest inserted
        after = await store.get_account(account.id)
    finally:
        await store.close()
    assert after is not None
    assert after.credits_micros == 1_000_000 - sum(e.cost_micros for e in entries)


@pytest.mark.parametrize("with_metrics", [False, True])
async def test_the_app_settles_the_embedded_ledger_in_the_stores_batches(
    tmp_path: Path, with_metrics: bool
) -> None:
    """The usage recorder gathers entries for the store's own interval (SQLite: 50 ms; its
    batch's fixed cost spread over more entries), also behind the store's metrics wrapper."""
    config = tmp_path / "klawd.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "klawd.db"}"\n')
    settings = load_settings(config, {})
    metrics = Metrics([], [], [], "sqlite") if with_metrics else None
    state = await build_state(settings, {}, metrics)
    try:
        assert state.recorder._flush_interval_s == SqliteStore.settle_interval_s == 0.05
    finally:
        await state.close()
