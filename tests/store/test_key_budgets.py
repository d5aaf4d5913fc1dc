"""Keys for teams in the store contract, on SQLite, Redis and Redis Cluster: a key's policy is
kept and changed, its own limits are tighter than the plan's, its budgets are reserved and
settled like credits (concurrent admissions never overspend by one micro-dollar), and spend is
reported per key."""

from __future__ import annotations

import asyncio

import msgspec

from gateway.limits import KeyGate, LimitSpec
from gateway.store.base import KeyBudget, KeyLimits, KeyPolicy, KeySpend, Store, UsageEntry
from tests.store.test_store_contract import entry, store  # noqa: F401 (the store fixture)

DAY = "2026-11-26"
ROOMY = LimitSpec(requests_per_minute=10_000, requests_per_day=100_000)


def gate(key_id: str, day: str = DAY, **budget: int) -> KeyGate:
    return KeyGate(key_id, day, budget=KeyBudget(**budget))


def settled(
    account_id: str, key_id: str, n: int, cost: int, reserved: int, day: str = DAY
) -> UsageEntry:
    return msgspec.structs.replace(
        entry(account_id, n, cost=cost, reserved=reserved),
        key_id=key_id,
        day=day,
        key_reserved_micros=reserved,
    )


async def test_a_keys_policy_is_kept_changed_and_listed(store: Store) -> None:  # noqa: F811
    account = await store.create_account("p", "free", 0)
    policy = KeyPolicy(
        KeyBudget(day_micros=5_000_000),
        KeyLimits(requests_per_minute=3),
        ("openai/*", "klawd/standard"),
        {"team": "search"},
    )
    key = await store.create_key(account.id, "k", "sk-klawd-abcd", "a" * 64, None, policy)
    assert key.policy == policy
    assert await store.get_key(key.id) == key
    assert (await store.key_by_hash("a" * 64)) == key
    changed = KeyPolicy(KeyBudget(total_micros=1), models=("anthropic/*",))
    updated = await store.update_key(key.id, changed)
    assert updated is not None and updated.policy == changed
    assert (await store.key_by_hash("a" * 64)) == updated
    assert [k.policy for k in await store.list_keys(account.id)] == [changed]
    assert await store.update_key("key_missing", changed) is None
    assert await store.get_key("key_missing") is None


async def test_a_keys_own_limits_are_tighter_than_the_plans(store: Store) -> None:  # noqa: F811
    account = await store.create_account("l", "free", 0)
    limiter = store.limiter()
    key = KeyGate("key_l", DAY, requests_per_minute=2)
    outcomes = [await limiter.admit(account.id, ROOMY, 0, key) for _ in range(4)]
    assert [a.outcome for a in outcomes] == ["admitted"] * 2 + ["rate_limited"] * 2
    assert outcomes[0].limit_requests == 2 and outcomes[0].remaining_requests == 1
    assert outcomes[-1].limited_by_key and 0 < outcomes[-1].retry_after_s <= 30.5
    other = KeyGate("key_other", DAY, requests_per_minute=2)
    assert (await limiter.admit(account.id, ROOMY, 0, other)).admitted, "another key is free"
    daily = KeyGate("key_d", DAY, requests_per_day=1)
    assert (await limiter.admit(account.id, ROOMY, 0, daily)).admitted
    denied = await limiter.admit(account.id, ROOMY, 0, daily)
    assert denied.outcome == "rate_limited" and denied.limited_by_key
    assert denied.limit_requests_day == 1 and denied.remaining_requests_day == 0


async def test_the_plans_limits_still_apply_to_a_generous_key(store: Store) -> None:  # noqa: F811
    account = await store.create_account("g", "free", 0)
    limiter = store.limiter()
    spec = LimitSpec(requests_per_minute=2, requests_per_day=100)
    key = KeyGate("key_g", DAY, requests_per_minute=50)
    outcomes = [await limiter.admit(account.id, spec, 0, key) for _ in range(3)]
    assert [a.outcome for a in outcomes] == ["admitted", "admitted", "rate_limited"]
    assert not outcomes[-1].limited_by_key and outcomes[0].limit_requests == 2


async def test_concurrent_admissions_never_overspend_a_key_budget(store: Store) -> None:  # noqa: F811
    account = await store.create_account("b", "free", 1_000_000)
    limiter = store.limiter()
    key = gate("key_b", day_micros=1_000)
    results = await asyncio.gather(*(limiter.admit(account.id, ROOMY, 30, key) for _ in range(60)))
    admitted = [r for r in results if r.admitted]
    assert len(admitted) == 33, "33 x 30 = 990 fits in 1000; a 34th would not"
    assert {r.outcome for r in results if not r.admitted} == {"key_budget_exceeded"}
    after = await store.get_account(account.id)
    assert after is not None and after.credits_micros == 1_000_000 - 990, "refusals reserved none"
    await store.settle([settled(account.id, "key_b", n, 30, 30) for n in range(33)])
    spend = await store.key_spend(account.id, ["key_b"], DAY)
    assert spend["key_b"] == KeySpend(today=990, month=990, total=990)
    assert (await limiter.admit(account.id, ROOMY, 10, key)).admitted, "exactly the budget"
    assert (await limiter.admit(account.id, ROOMY, 1, key)).outcome == "key_budget_exceeded"


async def test_settling_releases_the_unused_part_of_a_key_reservation(store: Store) -> None:  # noqa: F811
    account = await store.create_account("r", "free", 1_000_000)
    limiter = store.limiter()
    key = gate("key_r", day_micros=100)
    assert (await limiter.admit(account.id, ROOMY, 100, key)).admitted
    assert (await limiter.admit(account.id, ROOMY, 1, key)).outcome == "key_budget_exceeded"
    await store.settle([settled(account.id, "key_r", 1, cost=40, reserved=100)])
    assert (await limiter.admit(account.id, ROOMY, 60, key)).admitted
    assert (await limiter.admit(account.id, ROOMY, 1, key)).outcome == "key_budget_exceeded"


async def test_month_and_total_budgets_span_days(store: Store) -> None:  # noqa: F811
    account = await store.create_account("m", "free", 1_000_000)
    limiter = store.limiter()
    await store.settle([settled(account.id, "key_m", 1, cost=70, reserved=0, day="2026-11-02")])
    monthly = gate("key_m", month_micros=100)
    assert (await limiter.admit(account.id, ROOMY, 31, monthly)).outcome == "key_budget_exceeded"
    assert (await limiter.admit(account.id, ROOMY, 30, monthly)).admitted
    total = gate("key_m", day="2026-12-01", total_micros=100)
    assert (await limiter.admit(account.id, ROOMY, 1, total)).outcome == "key_budget_exceeded"
    spend = await store.key_spend(account.id, ["key_m", "key_none"], "2026-12-01")
    assert spend == {"key_m": KeySpend(today=0, month=0, total=70), "key_none": KeySpend()}


async def test_the_account_credit_still_caps_a_key_with_budget_left(store: Store) -> None:  # noqa: F811
    account = await store.create_account("c", "free", 50)
    limiter = store.limiter()
    key = gate("key_c", day_micros=1_000)
    assert (await limiter.admit(account.id, ROOMY, 60, key)).outcome == "insufficient_credits"
    assert (await limiter.admit(account.id, ROOMY, 50, key)).admitted


async def test_usage_is_reported_per_key(store: Store) -> None:  # noqa: F811
    account = await store.create_account("u", "free", 1_000_000)
    await store.settle(
        [
            settled(account.id, "key_a", 1, cost=10, reserved=0),
            settled(account.id, "key_a", 2, cost=20, reserved=0),
            settled(account.id, "key_b", 3, cost=5, reserved=0),
        ]
    )
    rows = await store.usage_by_key(account.id, "2026-11-20", "2026-11-30")
    assert [(r.day, r.key_id, r.requests, r.cost_micros) for r in rows] == [
        (DAY, "key_a", 2, 30),
        (DAY, "key_b", 1, 5),
    ]


async def test_a_name_is_marked_once(store: Store) -> None:  # noqa: F811
    results = await asyncio.gather(
        *(store.mark_once("budget:key_x:d:2026-11-26:80") for _ in range(5))
    )
    assert sorted(results) == [False] * 4 + [True]
    assert await store.mark_once("budget:key_x:d:2026-11-26:100")


async def test_a_key_without_a_budget_reserves_nothing_but_its_spend_is_kept(store: Store) -> None:  # noqa: F811
    account = await store.create_account("n", "free", 1_000_000)
    limiter = store.limiter()
    free = KeyGate("key_n", DAY, requests_per_minute=100)
    admitted = await limiter.admit(account.id, ROOMY, 500, free)
    assert admitted.admitted and admitted.reserved_micros == 500
    assert admitted.key_reserved_micros == 0
    budgeted = gate("key_y", day_micros=1_000)
    assert (await limiter.admit(account.id, ROOMY, 500, budgeted)).key_reserved_micros == 500
    await store.settle([settled(account.id, "key_n", 1, cost=120, reserved=0)])
    spend = await store.key_spend(account.id, ["key_n"], DAY)
    assert spend["key_n"] == KeySpend(today=120, month=120, total=120)


async def test_one_batch_moves_spend_and_reservations_as_its_entries_would(store: Store) -> None:  # noqa: F811
    """Entries of two keys over two days and of a key-less request, settled in one batch: each
    key's spend per period and every reservation move by the sums of their entries."""
    account = await store.create_account("s", "free", 1_000_000)
    limiter = store.limiter()
    first = gate("key_s1", day_micros=100)
    second = gate("key_s2", day="2026-11-27", day_micros=100)
    for key, reserved in ((first, 40), (first, 30), (second, 50)):
        assert (await limiter.admit(account.id, ROOMY, reserved, key)).admitted
    assert (await limiter.admit(account.id, ROOMY, 31, first)).outcome == "key_budget_exceeded"
    await store.settle(
        [
            settled(account.id, "key_s1", 1, cost=10, reserved=40),
            settled(account.id, "", 2, cost=7, reserved=0),
            settled(account.id, "key_s2", 3, cost=20, reserved=50, day="2026-11-27"),
            settled(account.id, "key_s1", 4, cost=15, reserved=30),
        ]
    )
    assert (await store.key_spend(account.id, ["key_s1"], DAY))["key_s1"] == KeySpend(25, 25, 25)
    spend = await store.key_spend(account.id, ["key_s2"], "2026-11-27")
    assert spend["key_s2"] == KeySpend(20, 20, 20)
    assert (await limiter.admit(account.id, ROOMY, 75, first)).admitted, "both released"
    assert (await limiter.admit(account.id, ROOMY, 1, first)).outcome == "key_budget_exceeded"
    assert (await limiter.admit(account.id, ROOMY, 80, second)).admitted
    after = await store.get_account(account.id)
    assert after is not None
    assert after.credits_micros == 1_000_000 - (10 + 7 + 20 + 15) - (75 + 80), "in flight: 155"


async def test_a_batch_over_a_months_end_moves_each_period_of_its_key(store: Store) -> None:  # noqa: F811
    """One key's entries on the last day of a month and the first of the next, in one batch:
    five periods of one key (two days, two months, the total) read back at once. Both days'
    spend is read by an admission (reserving nothing) before the batch, so that the admissions
    after it see what the batch's read-back wrote, not a fresh read of the store (the SQLite
    store reads a key's periods once, then keeps them up to date from each batch: a period the
    read-back missed would stay at its old spend and admit past the budget)."""
    account = await store.create_account("e", "free", 1_000_000)
    limiter = store.limiter()
    december = gate("key_e", day="2026-12-01", day_micros=46, month_micros=100, total_micros=81)
    november = gate("key_e", day="2026-11-30", month_micros=36)
    for read in (december, november):
        assert (await limiter.admit(account.id, ROOMY, 0, read)).admitted
    await store.settle(
        [
            settled(account.id, "key_e", 1, cost=30, reserved=0, day="2026-11-30"),
            settled(account.id, "key_e", 2, cost=45, reserved=0, day="2026-12-01"),
            settled(account.id, "key_e", 3, cost=5, reserved=0, day="2026-11-30"),
        ]
    )
    spend = await store.key_spend(account.id, ["key_e"], "2026-12-01")
    assert spend["key_e"] == KeySpend(today=45, month=45, total=80)
    spend = await store.key_spend(account.id, ["key_e"], "2026-11-30")
    assert spend["key_e"] == KeySpend(today=35, month=35, total=80)
    assert (await limiter.admit(account.id, ROOMY, 2, december)).outcome == "key_budget_exceeded"
    assert (await limiter.admit(account.id, ROOMY, 1, december)).admitted, "45 + 1 of 46, 81"
    assert (await limiter.admit(account.id, ROOMY, 2, november)).outcome == "key_budget_exceeded"
