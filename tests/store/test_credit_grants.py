"""An account's credit grants in the store contract, on SQLite, Redis and Redis Cluster: the
starting credit is the first grant, credits added start the next one from the balance then, and
the cost settled since counts against it (once per entry, reservations in flight excluded). Settle
returns each account's grant after the batch: what the `budget.threshold` events of the account's
credit measure (gateway/webhooks/credits.py)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from gateway.store.base import CreditGrant, CustomLimits, Store, UsageEntry, open_store
from gateway.usage import UsageRecorder
from tests.store.test_store_contract import entry, store  # noqa: F401 (the store fixture)


async def test_the_starting_credit_is_the_first_grant_and_settled_cost_counts_against_it(
    store: Store,  # noqa: F811
) -> None:
    account = await store.create_account("g", "free", 1_000)
    other = await store.create_account("h", "free", 50)
    grants = await store.settle(
        [entry(account.id, 1, cost=100, reserved=0), entry(account.id, 2, cost=200, reserved=0)]
    )
    assert grants == {account.id: CreditGrant(1, 1_000, account.created_at, 300)}
    grants = await store.settle([entry(other.id, 3, cost=10, reserved=0)])
    assert grants == {other.id: CreditGrant(1, 50, other.created_at, 10)}, "only this batch's"


async def test_credits_added_start_a_new_grant_from_the_balance_then(store: Store) -> None:  # noqa: F811
    account = await store.create_account("t", "free", 1_000)
    await store.settle([entry(account.id, 1, cost=300, reserved=0)])
    unchanged = await store.update_account(
        account.id, plan="pro", limits=CustomLimits(requests_per_day=5)
    )
    assert unchanged is not None
    grants = await store.settle([entry(account.id, 2, cost=100, reserved=0)])
    assert grants[account.id].seq == 1, "a change without credits is no grant"
    assert grants[account.id].spent_micros == 400
    before = int(time.time())
    topped = await store.update_account(account.id, add_credits_micros=500)
    assert topped is not None and topped.credits_micros == 1_100
    grants = await store.settle([entry(account.id, 3, cost=40, reserved=0)])
    grant = grants[account.id]
    assert (grant.seq, grant.granted_micros, grant.spent_micros) == (2, 1_100, 40)
    assert before <= grant.granted_at <= int(time.time())
    await store.update_account(account.id, add_credits_micros=1)
    third = (await store.settle([entry(account.id, 4, cost=0, reserved=0)]))[account.id]
    assert (third.seq, third.granted_micros, third.spent_micros) == (3, 1_061, 0)


async def test_an_entry_settled_twice_counts_once_against_the_grant(store: Store) -> None:  # noqa: F811
    account = await store.create_account("i", "free", 1_000)
    twice = entry(account.id, 1, cost=100, reserved=0)
    await store.settle([twice])
    grants = await store.settle([twice, entry(account.id, 2, cost=50, reserved=0)])
    assert grants[account.id].spent_micros == 150
    assert await store.settle([twice]) == {}, "nothing settled now: no grant to report"


async def test_a_batch_resent_reports_the_grant_of_entries_settled_before(
    store: Store,  # noqa: F811
) -> None:
    """The batch a lost reply left unknown, sent again: the grant its first try reported."""
    account = await store.create_account("j", "free", 1_000)
    other = await store.create_account("k", "free", 500)
    first = entry(account.id, 1, cost=100, reserved=0)
    await store.settle([first])
    grants = await store.settle([first, entry(other.id, 2, cost=5, reserved=0)], resent=True)
    assert grants == {
        account.id: CreditGrant(1, 1_000, account.created_at, 100),
        other.id: CreditGrant(1, 500, other.created_at, 5),
    }
    assert (await store.get_account(account.id)).credits_micros == 900, "settled once"  # type: ignore[union-attr]


async def test_a_reservation_in_flight_is_not_spent_until_it_settles(store: Store) -> None:  # noqa: F811
    account = await store.create_account("r", "free", 1_000)
    assert await store.reserve_credits(account.id, 600)
    assert await store.reserve_credits(account.id, 100)
    grants = await store.settle([entry(account.id, 1, cost=150, reserved=600)])
    assert grants[account.id].spent_micros == 150
    assert grants[account.id].granted_micros == 1_000


async def test_a_grant_is_made_from_the_balance_net_of_reservations_in_flight(
    store: Store,  # noqa: F811
) -> None:
    """The balance the account shows right after the grant (GET /admin/accounts/{id})."""
    account = await store.create_account("f", "free", 1_000)
    assert await store.reserve_credits(account.id, 300)
    topped = await store.update_account(account.id, add_credits_micros=200)
    assert topped is not None and topped.credits_micros == 900
    grants = await store.settle([entry(account.id, 1, cost=10, reserved=300)])
    assert grants[account.id] == CreditGrant(2, 900, grants[account.id].granted_at, 10)


async def test_an_account_from_before_grants_has_none_until_its_next_top_up(
    tmp_path: Path,
) -> None:
    """An embedded file made before grants were: its accounts get the columns, no grant."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE accounts (id TEXT PRIMARY KEY, name TEXT NOT NULL, plan TEXT NOT NULL,"
        " credits_micros INTEGER NOT NULL, limits TEXT NOT NULL DEFAULT '{}',"
        " created_at INTEGER NOT NULL);"
        "INSERT INTO accounts VALUES ('acct_old', 'old', 'free', 5000, '{}', 1700000000);"
    )
    conn.close()
    opened = open_store(f"sqlite:///{path}")
    try:
        assert await opened.settle([entry("acct_old", 1, cost=100, reserved=0)]) == {}
        await opened.update_account("acct_old", add_credits_micros=1_000)
        grants = await opened.settle([entry("acct_old", 2, cost=100, reserved=0)])
        assert grants["acct_old"].seq == 1
        assert (grants["acct_old"].granted_micros, grants["acct_old"].spent_micros) == (5_900, 100)
    finally:
        await opened.close()


async def test_every_settle_hook_hears_the_batch_and_its_grants_even_when_one_fails(
    store: Store,  # noqa: F811
) -> None:
    account = await store.create_account("k", "free", 1_000)
    heard: list[tuple[int, dict[str, CreditGrant]]] = []

    async def broken(batch: list[UsageEntry], grants: dict[str, CreditGrant]) -> None:
        raise RuntimeError("a hook's bug")

    async def listening(batch: list[UsageEntry], grants: dict[str, CreditGrant]) -> None:
        heard.append((len(batch), grants))

    recorder = UsageRecorder(store, after_settle=(broken, listening))
    recorder.record(entry(account.id, 1, cost=30, reserved=0))
    recorder.record(entry(account.id, 2, cost=20, reserved=0))
    await recorder.flush()
    assert heard == [(2, {account.id: CreditGrant(1, 1_000, account.created_at, 50)})]
    assert recorder.pending == 0, "settled once, not kept for a retry"
