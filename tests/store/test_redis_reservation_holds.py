"""A reservation on Redis is a hold that expires (`klawd_admit_v3`, `klawd_settle_v7`): a request
that is never settled (its worker killed, its admission's reply lost with the connection) has
what it reserved, of the account's credit and of its API key's budget, given back by the
account's next admission once the hold expired; a request settled after that moves the balance
by its cost alone (nothing is given back twice); a request settled in time leaves no hold. On one
Redis and on the suite's Redis Cluster (every key of an account in one slot)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from gateway.limits import Admission, KeyBudget, KeyGate, LimitSpec
from gateway.metrics import Metrics
from gateway.state import count_given_back_holds
from gateway.store.base import UsageEntry, open_store
from gateway.store.redis import RedisStore
from gateway.store.redis_limiter import RedisLimiter, _acct, _spend_keys
from tests.live_bound import running_deadline
from tests.redis_server import RedisClusterServers, RedisServer
from tests.usage_entries import admitted_entry

SPEC = LimitSpec(requests_per_minute=100, requests_per_day=1000)
DAY = time.strftime("%Y-%m-%d", time.gmtime())
CREDIT = 1_000_000  # $1
HOLD_S = 1.0  # long enough that the refusal below surely comes within it
BOUND_S = 10  # every wait here is bounded by this (never a timing assertion)


@pytest.fixture(params=["redis", "redis-cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[RedisStore]:
    server: RedisServer | RedisClusterServers = request.getfixturevalue(
        "redis_server" if request.param == "redis" else "redis_cluster"
    )
    server.flush()
    opened = open_store(server.url, reservation_hold_s=HOLD_S)
    assert isinstance(opened, RedisStore)
    try:
        yield opened
    finally:
        await opened.close()


def settled(admission: Admission, account_id: str, key_id: str, cost: int) -> UsageEntry:
    """The ledger entry of the admitted request (what Meter.settle records)."""
    return admitted_entry(
        admission,
        id=f"use_{admission.hold_id or 'none'}",
        day=DAY,
        account_id=account_id,
        key_id=key_id,
        model="m/x",
        provider="m",
        prompt_tokens=10,
        completion_tokens=5,
        cost_micros=cost,
        latency_ms=5,
        request_id="req_x",
    )


async def balance(store: RedisStore, account_id: str) -> int:
    account = await store.get_account(account_id)
    assert account is not None
    return account.credits_micros


async def holds(store: RedisStore, account_id: str) -> int:
    """How many holds the account has."""
    count: int = await store._call("ZCARD", f"{_acct(account_id)}:holds")
    return count


async def reserved_by_key(store: RedisStore, account_id: str, key_id: str) -> list[int]:
    """What is reserved against the key's budget in each of its spend periods (day, month,
    total)."""
    out = []
    for spend in _spend_keys(account_id, key_id, DAY):
        value = await store._call("HGET", spend, "r")
        out.append(int(value or 0))
    return out


async def past_the_hold(store: RedisStore, account_id: str) -> None:
    """Waits (bounded) until the account's holds have all expired by Redis's clock."""
    key = _acct(account_id)
    passed = running_deadline(BOUND_S)
    while True:
        seconds, micros = await store._call("TIME")
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        latest = await store._call("ZRANGE", f"{key}:holds", -1, -1)
        if not latest or float(await store._call("ZSCORE", f"{key}:holds", latest[0])) < now_ms:
            return
        assert not passed(), f"holds not expired within {BOUND_S} s"
        await asyncio.sleep(HOLD_S / 4)


def given_back(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings that expired holds were given back."""
    return [
        r.getMessage() for r in caplog.records if "expired credit reservation" in r.getMessage()
    ]


async def test_a_reservation_never_settled_is_given_back_once_its_hold_expired(
    store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    account = await store.create_account("killed", "free", CREDIT)
    key = KeyGate("key_b", DAY, budget=KeyBudget(day_micros=10 * CREDIT))
    limiter = RedisLimiter(store)
    # A request admitted by a worker that is then killed: nothing ever settles it.
    lost = await limiter.admit(account.id, SPEC, 600_000, key)
    assert lost.admitted and lost.hold_id
    assert await balance(store, account.id) == CREDIT - 600_000
    assert await reserved_by_key(store, account.id, "key_b") == [600_000] * 3
    # While its hold lasts the credit stays reserved: a second such request is refused.
    refused = await limiter.admit(account.id, SPEC, 600_000, key)
    assert refused.outcome == "insufficient_credits" and not refused.hold_id
    await past_the_hold(store, account.id)
    # The next admission gives the expired hold back first, then decides.
    later = await limiter.admit(account.id, SPEC, 600_000, key)
    assert later.admitted
    assert given_back(caplog) == [
        f"gave back 1 expired credit reservation(s) of account {account.id}: requests admitted "
        "more than [store] reservation_hold_s ago were never settled (a worker killed, a reply "
        "lost, or a request longer than the hold)"
    ]
    assert await balance(store, account.id) == CREDIT - 600_000
    assert await reserved_by_key(store, account.id, "key_b") == [600_000] * 3
    assert await holds(store, account.id) == 1  # the new request's only
    await store.settle([settled(later, account.id, "key_b", 100_000)])
    assert await balance(store, account.id) == CREDIT - 100_000
    assert await reserved_by_key(store, account.id, "key_b") == [0, 0, 0]
    assert await holds(store, account.id) == 0


async def test_a_request_settled_after_its_hold_was_given_back_pays_its_cost_once(
    store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    account = await store.create_account("slow", "free", CREDIT)
    key = KeyGate("key_s", DAY, budget=KeyBudget(month_micros=10 * CREDIT))
    limiter = RedisLimiter(store)
    slow = await limiter.admit(account.id, SPEC, 600_000, key)
    quick = await limiter.admit(account.id, SPEC, 100_000, key)
    await past_the_hold(store, account.id)
    # The quick request's settlement gives the account's expired holds back first (its own
    # and the slow one's), so each of the two pays its cost alone...
    await store.settle([settled(quick, account.id, "key_s", 10_000)])
    assert await balance(store, account.id) == CREDIT - 10_000
    assert await reserved_by_key(store, account.id, "key_s") == [0, 0, 0]
    assert await holds(store, account.id) == 0
    assert len(given_back(caplog)) == 1 and "gave back 2 " in given_back(caplog)[0]
    # ... the slow request too, still running then and settled later.
    await store.settle([settled(slow, account.id, "key_s", 250_000)])
    assert await balance(store, account.id) == CREDIT - 260_000
    assert await reserved_by_key(store, account.id, "key_s") == [0, 0, 0]
    spend = await store._call("HGET", _spend_keys(account.id, "key_s", DAY)[1], "s")
    assert int(spend) == 260_000


async def test_a_request_settled_in_time_leaves_no_hold(store: RedisStore) -> None:
    account = await store.create_account("quick", "free", CREDIT)
    limiter = RedisLimiter(store)
    admitted = [await limiter.admit(account.id, SPEC, 100_000) for _ in range(3)]
    assert len({a.hold_id for a in admitted}) == 3
    assert await holds(store, account.id) == 3
    await store.settle([settled(a, account.id, "", 30_000) for a in admitted])
    assert await balance(store, account.id) == CREDIT - 90_000
    assert await holds(store, account.id) == 0
    # (an empty sorted set is no key: nothing is left per account)
    assert await store._call("EXISTS", f"{_acct(account.id)}:holds") == 0
    # A request that reserves nothing records no hold on the lean client; on redis-py, which
    # sends a call again after a timed-out read, a hold of nothing (klawd_admit_v4: its retry's
    # proof), which its settle removes.
    free = await limiter.admit(account.id, SPEC, 0)
    assert free.admitted and free.hold_id == ("" if store.lean else f"{free.hold_id[:16]}|0")
    assert await holds(store, account.id) == (0 if store.lean else 1)
    await store.settle([settled(free, account.id, "", 0)])
    assert await holds(store, account.id) == 0


async def test_a_batch_retried_after_a_lost_reply_does_not_give_back_twice(
    store: RedisStore,
) -> None:
    account = await store.create_account("retried", "free", CREDIT)
    limiter = RedisLimiter(store)
    admitted = await limiter.admit(account.id, SPEC, 400_000)
    entry = settled(admitted, account.id, "", 50_000)
    await store.settle([entry])
    await store.settle([entry])  # the same batch again (its first reply was lost)
    assert await balance(store, account.id) == CREDIT - 50_000


async def test_reading_an_idle_accounts_balance_gives_its_expired_holds_back(
    store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    """An account that sends nothing more after its worker was killed: no admission or settlement
    of its own comes to give the hold back, so the balance read does (the API's, Mission
    Control's, the CLI's), and the metric counts it."""
    metrics = Metrics([], [], [], "redis")

    def released() -> float | None:
        return metrics.registry.get_sample_value("klawd_reservation_holds_released_total")

    count_given_back_holds(store, metrics)
    account = await store.create_account("idle", "free", CREDIT)
    key = KeyGate("key_i", DAY, budget=KeyBudget(total_micros=10 * CREDIT))
    lost = await RedisLimiter(store).admit(account.id, SPEC, 600_000, key)
    assert await balance(store, account.id) == CREDIT - 600_000  # within the hold: reserved
    assert given_back(caplog) == [] and released() == 0
    await past_the_hold(store, account.id)
    assert await balance(store, account.id) == CREDIT
    assert await reserved_by_key(store, account.id, "key_i") == [0, 0, 0]
    assert await holds(store, account.id) == 0
    assert len(given_back(caplog)) == 1 and "gave back 1 " in given_back(caplog)[0]
    assert released() == 1
    assert await balance(store, account.id) == CREDIT  # given back once
    assert released() == 1
    # The request, had it lived, settles for its cost alone.
    await store.settle([settled(lost, account.id, "key_i", 70_000)])
    assert await balance(store, account.id) == CREDIT - 70_000
    assert await store.get_account("acct_missing") is None
