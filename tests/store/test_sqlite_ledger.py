"""The embedded store's ledger rows: every column of every settled entry, whatever the batch's size
and mix (the entries go in by multi-row INSERTs of 96, 32, 16, 8, 4, 2 and 1 rows, a statement
run per group of rows sharing day, model, provider, images, status and stream; the ids already in
the ledger are looked up by statements of 256, 64, 16, 4 and 1 ids)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest
from msgspec.structs import astuple

from gateway.metrics import Metrics
from gateway.settings import load_settings
from gateway.state import build_state
from gateway.store.base import StoreError, UsageEntry, open_store
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


def alike(account_id: str, n: int) -> UsageEntry:
    """Entries of one day, model, provider, status and key, as one client's batch is: their
    rows share the statement's six shared values, and their sums are taken a column at a time."""
    return msgspec.structs.replace(
        entry(account_id, n),
        day="2026-11-12",
        key_id="key_one",
        model="m/one",
        provider="p",
        images=0,
        status=200,
        stream=True,
        key_reserved_micros=n % 5,
    )


@pytest.mark.parametrize("sizes", [[1], [96], [97, 161], [2, 255, 33]])
async def test_a_batch_of_one_model_and_key_stores_every_column_and_charges_its_sums(
    tmp_path: Path, sizes: list[int]
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'klawd.db'}")
    try:
        account = await store.create_account("a", "free", 1_000_000)
        entries = [alike(account.id, n) for n in range(sum(sizes))]
        start = 0
        for size in sizes:
            await store.settle(entries[start : start + size])
            start += size
        await store.settle(entries[:40])  # replayed: nothing twice
        after = await store.get_account(account.id)
        spend = await store.key_spend(account.id, ["key_one"], "2026-11-12")
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "klawd.db") as conn:
        rows = conn.execute(
            "SELECT id, ts, day, account_id, key_id, model, provider, prompt_tokens,"
            " completion_tokens, images, cost_micros, reserved_micros, latency_ms, status,"
            " request_id, stream FROM usage_ledger ORDER BY id"
        ).fetchall()
    assert rows == [astuple(e)[:16] for e in entries]
    cost = sum(e.cost_micros for e in entries)
    assert after is not None
    assert after.credits_micros == 1_000_000 - cost
    assert spend["key_one"].today == spend["key_one"].total == cost


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


# The ledger's table as files made before issue 19zx have it (its texts stored in every row).
OLD_LEDGER = """
CREATE TABLE usage_ledger (
    id TEXT PRIMARY KEY, ts REAL NOT NULL, day TEXT NOT NULL, account_id TEXT NOT NULL,
    key_id TEXT NOT NULL, model TEXT NOT NULL, provider TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, images INTEGER NOT NULL,
    cost_micros INTEGER NOT NULL, reserved_micros INTEGER NOT NULL, latency_ms INTEGER NOT NULL,
    status INTEGER NOT NULL, request_id TEXT NOT NULL, stream INTEGER NOT NULL
);
CREATE INDEX usage_ledger_account_day ON usage_ledger(account_id, day);
"""


def _ledger_rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT rowid, id, ts, day, account_id, key_id, model, provider, prompt_tokens,"
            " completion_tokens, images, cost_micros, reserved_micros, latency_ms, status,"
            " request_id, stream FROM usage_ledger ORDER BY rowid"
        ).fetchall()


async def test_a_ledger_from_before_names_were_stored_once_keeps_every_row(
    tmp_path: Path,
) -> None:
    """A file whose ledger stored its texts in every row: opened, every row reads as before with
    its rowid (the webhooks' usage cursors), the usage queries answer as before, a replayed old
    entry settles nothing, and new entries come after the old ones."""
    path = tmp_path / "old.db"
    old = [entry("acct_old", n) for n in range(40)]
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_LEDGER)
        for n, row in enumerate(old):  # rowids with gaps, as deletions would leave them
            conn.execute(
                "INSERT INTO usage_ledger (rowid, id, ts, day, account_id, key_id, model,"
                " provider, prompt_tokens, completion_tokens, images, cost_micros,"
                " reserved_micros, latency_ms, status, request_id, stream)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (3 * n + 1, *astuple(row)[:16]),
            )
    before = _ledger_rows(path)
    assert [row[0] for row in before] == [3 * n + 1 for n in range(40)]

    store = open_store(f"sqlite:///{path}")
    try:
        account = await store.create_account("new", "free", 1_000_000)
        usage = await store.usage("acct_old", "2026-11-01", "2026-11-30")
        by_key = await store.usage_by_key("acct_old", "2026-11-01", "2026-11-30")
        since, cursor = await store.usage_since("acct_old", "10")
        assert await store.usage_cursor("acct_old") == str(3 * 39 + 1)
        await store.settle([*old[:5], entry(account.id, 100)])  # the old five: already settled
        after = await store.get_account(account.id)
    finally:
        await store.close()

    rows = _ledger_rows(path)
    assert rows[:40] == before
    assert [row[1:] for row in rows[40:]] == [astuple(entry(account.id, 100))[:16]]
    assert rows[40][0] > rows[39][0]
    assert after is not None
    assert after.credits_micros == 1_000_000 - entry(account.id, 100).cost_micros
    # The usage queries' answers, summed from the old rows themselves.
    expected: dict[tuple[str, str], list[int]] = {}
    for e in old:
        sums = expected.setdefault((e.day, e.model), [0, 0, 0, 0, 0])
        for i, value in enumerate(
            (1, e.prompt_tokens, e.completion_tokens, e.images, e.cost_micros)
        ):
            sums[i] += value
    assert [(r.day, r.model, r.requests, r.prompt_tokens, r.completion_tokens, r.images,
             r.cost_micros) for r in usage] == [
        (day, model, *sums) for (day, model), sums in sorted(expected.items())
    ]  # fmt: skip
    assert sum(r.requests for r in by_key) == 40
    assert sum(r.requests for r in since) == sum(1 for n in range(40) if 3 * n + 1 > 10)
    assert cursor == str(3 * 39 + 1)


async def test_an_old_ledger_is_moved_once_and_opens_again(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_LEDGER)
        conn.execute(
            "INSERT INTO usage_ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            astuple(entry("acct_old", 1))[:16],
        )
    before = _ledger_rows(path)
    for _ in range(2):
        store = open_store(f"sqlite:///{path}")
        try:
            await store.ping()
        finally:
            await store.close()
    assert _ledger_rows(path) == before
    with sqlite3.connect(path) as conn:
        kinds = dict(conn.execute("SELECT name, type FROM sqlite_master"))
    assert kinds["usage_ledger"] == "view"
    assert "usage_ledger_account_day" not in kinds


async def test_names_added_by_a_batch_rolled_back_are_not_used_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that fails after adding new names to the file is rolled back, names and all: the
    next batches add them again instead of using ids that name nothing (or, reused, another
    name)."""
    from gateway.store import sqlite_grants

    store = open_store(f"sqlite:///{tmp_path / 'klawd.db'}")
    charge = sqlite_grants.charge
    try:
        account = await store.create_account("a", "free", 1_000_000)

        def charge_fails(*args: object) -> object:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(sqlite_grants, "charge", charge_fails)
        with pytest.raises(StoreError, match="sqlite store failed"):
            await store.settle([entry(account.id, 1)])
        monkeypatch.setattr(sqlite_grants, "charge", charge)
        other = msgspec.structs.replace(entry(account.id, 2), model="m/other", provider="q")
        await store.settle([other, entry(account.id, 1)])
    finally:
        await store.close()
    rows = _ledger_rows(tmp_path / "klawd.db")
    assert [row[1:] for row in rows] == [
        astuple(other)[:16],
        astuple(entry(account.id, 1))[:16],
    ]


async def test_a_replayed_entry_beside_new_names_rolls_back_and_settles_the_new_once(
    tmp_path: Path,
) -> None:
    """A batch whose insert meets an id the ledger holds (a replay) after adding names new to the
    file is rolled back whole, names and all, and settled again: the new entry once, under its
    own names, the replayed one not again."""
    store = open_store(f"sqlite:///{tmp_path / 'klawd.db'}")
    try:
        account = await store.create_account("a", "free", 1_000_000)
        old = entry(account.id, 1)
        await store.settle([old])
        new = msgspec.structs.replace(entry(account.id, 2), model="m/new", provider="p-new")
        await store.settle([new, old, new])
        after = await store.get_account(account.id)
    finally:
        await store.close()
    assert after is not None
    assert after.credits_micros == 1_000_000 - old.cost_micros - new.cost_micros
    rows = _ledger_rows(tmp_path / "klawd.db")
    assert [row[1:] for row in rows] == [astuple(old)[:16], astuple(new)[:16]]
