"""The embedded store notices what another process (the `klawd` CLI) commits to its file."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gateway.store import sqlite as sqlite_store
from gateway.store.base import open_store
from tests.live_bound import within


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "EXTERNAL_CHANGES_POLL_S", 0.01)


async def test_a_commit_by_another_connection_drops_every_cache_and_balance(
    tmp_path: Path,
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'klawd.db'}")
    account = await store.create_account("a", "free", 1_000)
    assert await store.reserve_credits(account.id, 600)
    signals: list[tuple[str, str]] = []
    seen = asyncio.Event()

    def handler(kind: str, ident: str) -> None:
        signals.append((kind, ident))
        seen.set()

    store.on_invalidate(handler)
    await asyncio.sleep(0.1)  # several polls: nothing changed elsewhere yet
    assert signals == []
    with sqlite3.connect(tmp_path / "klawd.db") as other:  # as `klawd accounts update` would
        other.execute(
            "UPDATE accounts SET credits_micros = credits_micros + 5000 WHERE id = ?",
            (account.id,),
        )
    await within(seen.wait(), 5)
    assert signals[0] == ("all", "")
    # the balance is read again: the added credits count at once, the reservation still holds
    assert await store.reserve_credits(account.id, 5_000)
    assert not await store.reserve_credits(account.id, 401)
    await store.close()


async def test_the_store_s_own_writes_do_not_count_as_changes_elsewhere(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'klawd.db'}")
    signals: list[tuple[str, str]] = []
    store.on_invalidate(lambda kind, ident: signals.append((kind, ident)))
    await asyncio.sleep(0.05)
    for n in range(5):
        account = await store.create_account(f"own-{n}", "free", 100)
        await store.update_account(account.id, add_credits_micros=1)
        await asyncio.sleep(0.02)
    assert signals == []
    await store.close()
