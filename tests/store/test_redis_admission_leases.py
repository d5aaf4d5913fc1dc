"""Admission leases on Redis (decision 0003, "Admission leases (issue 19zl)"): a worker that
admits many requests of one account and key takes, with one admission (`klawd_admit_lease_v1`),
a block of requests and credit from the same buckets, quotas and balance, and admits them in
process until they are used or the lease's life is over; the unused rest comes back
(`klawd_lease_return_v1`). Nothing is ever admitted beyond a limit or a balance, across
limiters sharing one Redis; near a bound no lease is granted and every admission is exact; a
request settled under a lease takes its reservation out of the lease's hold; a lease whose
worker died has its credit given back when its hold expires."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from gateway.limits import Admission, KeyGate, LimitSpec
from gateway.store.base import KeyBudget, StoreError, UsageEntry, open_store
from gateway.store.redis import RedisStore
from gateway.store.redis_limiter import (
    LEASE_LIFE_S,
    LEASE_MAX,
    LEASE_MIN_SEEN,
    RedisLimiter,
    _acct,
    _spend_keys,
)
from tests.live_bound import polls_async, within
from tests.redis_server import RedisClusterServers, RedisServer
from tests.usage_entries import admitted_entry

DAY = time.strftime("%Y-%m-%d", time.gmtime())
BIG = LimitSpec(requests_per_minute=1_000_000, requests_per_day=1_000_000)
CREDIT = 1_000_000_000  # $1000
RESERVE = 1_000
BOUND_S = 10  # every wait here is bounded by this (never a timing assertion)


class Clock:
    """The limiter's clock (its rate windows and its leases' life), moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    redis_server.flush()
    opened = open_store(redis_server.url, reservation_hold_s=1.0)
    assert isinstance(opened, RedisStore)
    try:
        yield opened
    finally:
        await opened.close()


async def admit(
    limiter: RedisLimiter,
    account_id: str,
    spec: LimitSpec = BIG,
    reserve: int = RESERVE,
    key: KeyGate | None = None,
) -> Admission:
    """One admission as `Meter.start` makes it: from a lease held, else sent (asking for a lease
    when the limiter wants one), else awaited."""
    leased = limiter.admit_leased(account_id, spec, reserve, key)
    if leased is not None:
        return leased
    asked = limiter.lease_asked(account_id, spec, key)
    if asked is not None:
        await asked
        leased = limiter.admit_leased(account_id, spec, reserve, key, counted=True)
        if leased is not None:
            return leased
    sent = limiter.send_admit(account_id, spec, reserve, key)
    if sent is None:
        return await limiter.admit(account_id, spec, reserve, key)
    admission = limiter.admission_of(await sent[0], account_id, reserve, key)
    assert admission is not None
    return admission


async def warm(limiter: RedisLimiter, account_id: str) -> None:
    """Admissions enough in one window for the next one to ask for a lease (of
    LEASE_MIN_SEEN requests: as many as the window saw, that one included)."""
    for _ in range(LEASE_MIN_SEEN - 1):
        assert (await admit(limiter, account_id)).admitted


def entry(
    admission: Admission, account_id: str, cost: int, n: int, key_id: str = "key_l"
) -> UsageEntry:
    return admitted_entry(
        admission,
        id=f"use_lease_{n}",
        day=DAY,
        account_id=account_id,
        key_id=key_id,
        model="m/x",
        provider="m",
        prompt_tokens=1,
        completion_tokens=1,
        cost_micros=cost,
        latency_ms=1,
        request_id=f"req_{n}",
    )


async def used_today(store: RedisStore, account_id: str) -> int:
    return int(await store._call("HGET", f"{_acct(account_id)}:rpd", "count") or 0)


async def credits(store: RedisStore, account_id: str) -> int:
    return int(await store._call("GET", f"{_acct(account_id)}:credits"))


async def returned(limiter: RedisLimiter) -> None:
    """Every lease given back, and the give-backs done."""
    await limiter.close()


async def test_a_busy_account_is_admitted_in_process_from_a_lease_taken_from_its_buckets(
    store: RedisStore,
) -> None:
    account = await store.create_account("busy", "free", CREDIT)
    clock = Clock()
    limiter = RedisLimiter(store, clock)
    await warm(limiter, account.id)
    assert await used_today(store, account.id) == LEASE_MIN_SEEN - 1
    # This admission asks for a lease of as many requests as the window saw...
    asking = await admit(limiter, account.id)
    assert asking.admitted and asking.hold_id and not asking.hold_id.startswith("L")
    # ... taken at once from the day's quota and the balance
    assert await used_today(store, account.id) == 2 * LEASE_MIN_SEEN
    assert await credits(store, account.id) == CREDIT - 2 * LEASE_MIN_SEEN * RESERVE
    # and admitted in process: no call, the reservation held by the lease
    half = LEASE_MIN_SEEN // 2
    leased = [limiter.admit_leased(account.id, BIG, RESERVE) for _ in range(half)]
    assert all(a is not None and a.admitted for a in leased)
    assert {a.hold_id[0] for a in leased if a is not None} == {"L"}
    # the headers count down from the asking admission's, as if admitted one by one
    assert asking.remaining_requests_day == BIG.requests_per_day - LEASE_MIN_SEEN
    assert [a.remaining_requests_day for a in leased if a is not None] == [
        BIG.requests_per_day - LEASE_MIN_SEEN - n for n in range(1, half + 1)
    ]
    # Half used: the next request asks for the next lease, sent with its admission...
    assert limiter.admit_leased(account.id, BIG, RESERVE) is None
    asking_next = await admit(limiter, account.id)
    assert asking_next.admitted and not asking_next.hold_id.startswith("L")
    second = await used_today(store, account.id) - 2 * LEASE_MIN_SEEN - 1
    assert second >= LEASE_MIN_SEEN
    # ... and the first lease's other half is used first, then the next lease
    first_rest = [limiter.admit_leased(account.id, BIG, RESERVE) for _ in range(half)]
    assert len({a.hold_id for a in first_rest if a is not None}) == 1
    then = limiter.admit_leased(account.id, BIG, RESERVE)
    assert then is not None and then.hold_id.startswith("L")
    assert then.hold_id != leased[0].hold_id  # type: ignore[union-attr]
    await returned(limiter)
    # what was used stays used: the sent ones, the first lease and one of the second
    assert await used_today(store, account.id) == LEASE_MIN_SEEN + 1 + LEASE_MIN_SEEN + 1


async def test_what_a_lease_did_not_use_comes_back(store: RedisStore) -> None:
    account = await store.create_account("unused", "free", CREDIT)
    clock = Clock()
    limiter = RedisLimiter(store, clock)
    await warm(limiter, account.id)
    assert (await admit(limiter, account.id)).admitted  # asks for a lease of LEASE_MIN_SEEN
    assert limiter.admit_leased(account.id, BIG, RESERVE) is not None  # one of it used
    await returned(limiter)
    # LEASE_MIN_SEEN sent, one leased: the rest of the lease is back in the quota
    assert await used_today(store, account.id) == LEASE_MIN_SEEN + 1
    assert await credits(store, account.id) == CREDIT - (LEASE_MIN_SEEN + 1) * RESERVE
    # the lease's hold holds the one leased request's reservation until it is settled
    assert await store._call("HVALS", f"{_acct(account.id)}:leases") == [str(RESERVE).encode()]


async def test_a_lease_expires_after_its_life_and_is_given_back(store: RedisStore) -> None:
    account = await store.create_account("expiring", "free", CREDIT)
    clock = Clock()
    limiter = RedisLimiter(store, clock)
    await warm(limiter, account.id)
    assert (await admit(limiter, account.id)).admitted
    clock.now += LEASE_LIFE_S  # past its life by the worker's clock: not used any more
    assert limiter.admit_leased(account.id, BIG, RESERVE) is None
    await returned(limiter)
    assert await used_today(store, account.id) == LEASE_MIN_SEEN
    assert await credits(store, account.id) == CREDIT - LEASE_MIN_SEEN * RESERVE
    assert await store._call("EXISTS", f"{_acct(account.id)}:leases") == 0
    # its timer gives it back too, without another request (after the real LEASE_LIFE_S)
    clock.now += 3 * LEASE_LIFE_S  # a quiet while: the rate starts again from nothing
    await warm(limiter, account.id)
    assert (await admit(limiter, account.id)).admitted
    assert await store._call("EXISTS", f"{_acct(account.id)}:leases") == 1
    turns = polls_async(BOUND_S, LEASE_LIFE_S / 2)
    while await store._call("EXISTS", f"{_acct(account.id)}:leases"):
        assert await anext(turns, None) is not None
    assert await used_today(store, account.id) == 2 * LEASE_MIN_SEEN


async def test_requests_settled_under_a_lease_pay_their_cost_once(store: RedisStore) -> None:
    account = await store.create_account("settled", "free", CREDIT)
    clock = Clock()
    limiter = RedisLimiter(store, clock)
    await warm(limiter, account.id)
    first = await admit(limiter, account.id)
    leased = [limiter.admit_leased(account.id, BIG, RESERVE) for _ in range(3)]
    admissions = [first, *[a for a in leased if a is not None]]
    assert len(admissions) == 4
    await returned(limiter)  # the lease's unused part given back before its requests settle
    await store.settle([entry(a, account.id, 300, n) for n, a in enumerate(admissions)])
    # the warm-up's requests are still unsettled (their reservations held); the four settled
    # paid 300 each and hold nothing any more
    warmed = (LEASE_MIN_SEEN - 1) * RESERVE
    assert await credits(store, account.id) == CREDIT - warmed - 4 * 300
    assert await store._call("EXISTS", f"{_acct(account.id)}:leases") == 0
    assert await store._call("ZCARD", f"{_acct(account.id)}:holds") == LEASE_MIN_SEEN - 1
    # settled twice (a batch retried): nothing moves
    await store.settle([entry(a, account.id, 300, n) for n, a in enumerate(admissions)])
    assert await credits(store, account.id) == CREDIT - warmed - 4 * 300


async def test_a_lease_held_out_partway_through_a_call_settles_its_later_entries_by_cost(
    store: RedisStore,
) -> None:
    """One call, four entries of one lease whose hold covers two and a half reservations:
    each takes its reservation out of the hold until it holds nothing (the hold then gone),
    and the entry after that moves the balance by its cost alone, as an entry whose hold
    expired does (settle_entries follows the previous entry's lease without looking it up
    again: this is the path it takes)."""
    account = await store.create_account("held out", "free", CREDIT)
    acct = _acct(account.id)
    await store._call("HSET", f"{acct}:leases", "Lheld", 250)
    await store._call("ZADD", f"{acct}:holds", 2**50, "Lheld|0")
    lease = Admission("admitted", 0.0, 0, 0, 0.0, 0, 0, reserved_micros=100, hold_id="Lheld")
    await store.settle(
        [entry(lease, account.id, cost, n) for n, cost in enumerate((10, 20, 30, 40))]
    )
    # reservations released (100 - cost) by the first three; the fourth pays its 40
    assert await credits(store, account.id) == CREDIT + 90 + 80 + 70 - 40
    assert await store._call("EXISTS", f"{acct}:leases") == 0
    assert await store._call("ZCARD", f"{acct}:holds") == 0


async def test_one_settle_call_takes_each_leases_requests_out_of_its_own_hold(
    store: RedisStore,
) -> None:
    """Two workers' leases settled in one call, their entries interleaved: the lease given back
    first is gone once its requests are settled, the other still holds what its unsettled
    requests reserved (the call reads and writes each lease once)."""
    account = await store.create_account("two leases", "free", CREDIT)
    workers = [RedisLimiter(store, Clock()), RedisLimiter(store, Clock())]
    admitted: list[list[Admission]] = []
    for limiter in workers:
        await warm(limiter, account.id)
        asking = await admit(limiter, account.id)
        leased = [limiter.admit_leased(account.id, BIG, RESERVE) for _ in range(3)]
        assert all(a is not None and a.hold_id.startswith("L") for a in leased)
        admitted.append([asking, *[a for a in leased if a is not None]])
    (first_asking, *first), (second_asking, *second) = admitted
    await returned(workers[0])  # the first lease's unused part back: it holds its 3 requests
    leases = f"{_acct(account.id)}:leases"
    assert sorted(await store._call("HVALS", leases)) == sorted(
        [str(3 * RESERVE).encode(), str(LEASE_MIN_SEEN * RESERVE).encode()]
    )
    # the first lease's three, two of the second's and its asking request's own hold
    batch = [first[0], second[0], first[1], second[1], first[2], second_asking]
    await store.settle([entry(a, account.id, 300, n) for n, a in enumerate(batch)])
    assert await store._call("HVALS", leases) == [str((LEASE_MIN_SEEN - 2) * RESERVE).encode()]
    holds = await store._call("ZRANGE", f"{_acct(account.id)}:holds", 0, -1)
    assert second[0].hold_id.encode() in holds and first[0].hold_id.encode() not in holds
    settled = [second[2]]
    await store.settle([entry(a, account.id, 300, 10) for a in settled])
    await returned(workers[1])
    assert await store._call("EXISTS", leases) == 0
    # left: both warm-ups' requests and the first worker's asking request, unsettled
    unsettled = 2 * (LEASE_MIN_SEEN - 1) + 1
    assert await credits(store, account.id) == CREDIT - unsettled * RESERVE - 7 * 300
    assert await store._call("ZCARD", f"{_acct(account.id)}:holds") == unsettled
    assert first_asking.hold_id and not first_asking.hold_id.startswith("L")


async def test_near_a_limit_no_lease_is_granted_and_the_refusal_is_exact(
    store: RedisStore,
) -> None:
    """A day's quota just short of 5 leases' worth: the lease must leave LEASE_HEADROOM (4)
    leases' worth after it, so none is granted, and the quota's last request is exact."""
    limit = 5 * LEASE_MIN_SEEN - 1
    spec = LimitSpec(requests_per_minute=1_000_000, requests_per_day=limit)
    account = await store.create_account("near", "free", CREDIT)
    clock = Clock()
    limiter = RedisLimiter(store, clock)
    outcomes = []
    for _ in range(limit + 3):
        outcomes.append((await admit(limiter, account.id, spec)).outcome)
        clock.now += LEASE_LIFE_S / (2 * LEASE_MIN_SEEN)  # busy enough to ask for leases
    assert outcomes == ["admitted"] * limit + ["rate_limited"] * 3
    assert await used_today(store, account.id) == limit
    assert await store._call("EXISTS", f"{_acct(account.id)}:leases") == 0


async def test_a_lease_is_not_used_past_its_hold(redis_server: RedisServer) -> None:
    """A reservation hold shorter than a lease's life: the lease is over when its hold
    expires (given back by the account's next settlement or credit refusal), not admitting
    in process from a credit Redis holds no more."""
    redis_server.flush()
    short = open_store(redis_server.url, reservation_hold_s=LEASE_LIFE_S / 2)
    assert isinstance(short, RedisStore)
    try:
        account = await short.create_account("short", "free", CREDIT)
        clock = Clock()
        limiter = RedisLimiter(short, clock)
        await warm(limiter, account.id)
        assert (await admit(limiter, account.id)).admitted  # asks for a lease
        assert limiter.admit_leased(account.id, BIG, RESERVE) is not None
        clock.now += LEASE_LIFE_S * 3 / 4  # past the hold, within LEASE_LIFE_S
        assert limiter.admit_leased(account.id, BIG, RESERVE) is None
        await returned(limiter)
    finally:
        await short.close()


async def test_a_balance_near_its_end_gets_no_lease(store: RedisStore) -> None:
    balance = 4 * LEASE_MIN_SEEN * RESERVE  # after the asking request, < 4 leases' credit
    account = await store.create_account("poor", "free", balance)
    clock = Clock()
    limiter = RedisLimiter(store, clock)
    outcomes = []
    for _ in range(balance // RESERVE + 2):
        outcomes.append((await admit(limiter, account.id)).outcome)
        clock.now += LEASE_LIFE_S / (2 * LEASE_MIN_SEEN)
    assert outcomes == ["admitted"] * (balance // RESERVE) + ["insufficient_credits"] * 2
    assert await store._call("EXISTS", f"{_acct(account.id)}:leases") == 0


async def test_a_token_limit_is_always_decided_per_request(store: RedisStore) -> None:
    spec = LimitSpec(1_000_000, 1_000_000, tokens_per_minute=1_000_000)
    account = await store.create_account("exact", "free", CREDIT)
    clock = Clock()
    limiter = RedisLimiter(store, clock)
    for _ in range(4 * LEASE_MIN_SEEN):
        assert (await admit(limiter, account.id, spec)).admitted
        clock.now += LEASE_LIFE_S / (2 * LEASE_MIN_SEEN)
    assert await store._call("EXISTS", f"{_acct(account.id)}:leases") == 0
    assert await used_today(store, account.id) == 4 * LEASE_MIN_SEEN


async def test_two_workers_with_leases_never_admit_beyond_the_day_quota(
    redis_server: RedisServer,
) -> None:
    """Two stores (two workers) on one Redis, leasing against one quota, admitting concurrently
    until refused: never more than the quota; once their leases are given back, what they held
    unused is admitted to the last request."""
    redis_server.flush()
    limit = 40 * LEASE_MAX
    spec = LimitSpec(requests_per_minute=1_000_000, requests_per_day=limit)
    stores = [open_store(redis_server.url) for _ in range(2)]
    try:
        assert all(isinstance(s, RedisStore) for s in stores)
        account = await stores[0].create_account("shared", "free", CREDIT)
        clocks = [Clock(), Clock()]
        limiters = [RedisLimiter(s, c) for s, c in zip(stores, clocks, strict=True)]  # type: ignore[arg-type]
        admitted = [0, 0]
        leased = [0, 0]

        async def worker(i: int) -> None:
            for _ in range(limit):
                admission = await admit(limiters[i], account.id, spec)
                clocks[i].now += LEASE_LIFE_S / (4 * LEASE_MAX)
                if admission.outcome == "rate_limited":
                    return
                admitted[i] += 1
                leased[i] += admission.hold_id.startswith("L")

        await asyncio.gather(worker(0), worker(1))
        assert sum(leased) > 0  # leases were used
        assert sum(admitted) <= limit
        for limiter in limiters:
            await limiter.close()
        # what the leases held unused is back: admitted exactly to the quota, then refused
        store = stores[0]
        assert isinstance(store, RedisStore)
        last = RedisLimiter(store)
        while sum(admitted) < limit:
            assert (await last.admit(account.id, spec, RESERVE)).admitted
            admitted[0] += 1
        assert (await last.admit(account.id, spec, RESERVE)).outcome == "rate_limited"
        assert await used_today(store, account.id) == limit
    finally:
        for s in stores:
            await s.close()


async def test_a_lease_whose_worker_died_has_its_credit_given_back_when_its_hold_expires(
    store: RedisStore,
) -> None:
    account = await store.create_account("died", "free", CREDIT)
    clock = Clock()
    limiter = RedisLimiter(store, clock)
    await warm(limiter, account.id)
    assert (await admit(limiter, account.id)).admitted
    held = await store._call("HVALS", f"{_acct(account.id)}:leases")
    assert held == [str(LEASE_MIN_SEEN * RESERVE).encode()]
    # the worker dies: its lease is never given back, its requests never settled
    for seen in limiter._seen.values():
        if seen.lease is not None and seen.lease.timer is not None:
            seen.lease.timer.cancel()
        seen.lease = None
    turns = polls_async(BOUND_S, 0.25)
    while (await store.get_account(account.id)).credits_micros != CREDIT:  # type: ignore[union-attr]
        assert await anext(turns, None) is not None, "the lease's hold was not given back"
    assert await store._call("EXISTS", f"{_acct(account.id)}:leases") == 0
    assert await store._call("ZCARD", f"{_acct(account.id)}:holds") == 0


async def test_a_lease_asked_for_by_a_cancelled_request_is_kept_and_its_admission_given_back(
    store: RedisStore,
) -> None:
    """The request that asks for a lease goes away while its call travels: the reply goes to
    the call's undo, which installs the lease and hands the request's own admission (its own
    hold, not the lease's) to `dropped`, once."""
    account = await store.create_account("cancelled", "free", CREDIT)
    clock = Clock()
    limiter = RedisLimiter(store, clock)
    await warm(limiter, account.id)
    assert limiter.admit_leased(account.id, BIG, RESERVE) is None
    given_back: list[Admission] = []
    sent = limiter.send_admit(account.id, BIG, RESERVE, None, given_back.append)
    assert sent is not None
    sent[0].cancel()
    turns = polls_async(BOUND_S, 0.01)
    while not given_back:
        assert await anext(turns, None) is not None, "the cancelled call's reply never came back"
    assert len(given_back) == 1 and given_back[0].admitted
    assert given_back[0].hold_id and not given_back[0].hold_id.startswith("L")
    leased = limiter.admit_leased(account.id, BIG, RESERVE)
    assert leased is not None and leased.hold_id.startswith("L")
    await returned(limiter)
    # the warm-up, the asking request (its give-back is the Meter's settlement) and one leased
    assert await used_today(store, account.id) == LEASE_MIN_SEEN + 1
    assert await credits(store, account.id) == CREDIT - (LEASE_MIN_SEEN + 1) * RESERVE


async def test_an_account_change_ends_its_leases(store: RedisStore) -> None:
    account = await store.create_account("changed", "free", CREDIT)
    other = await store.create_account("other", "free", CREDIT)
    clock = Clock()
    limiter = RedisLimiter(store, clock)
    for name in (account.id, other.id):
        await warm(limiter, name)
        assert (await admit(limiter, name)).admitted
    limiter.end_leases(account.id)  # (Meter.invalidated, on `klawd:invalidate`)
    assert limiter.admit_leased(account.id, BIG, RESERVE) is None
    assert limiter.admit_leased(other.id, BIG, RESERVE) is not None
    await returned(limiter)
    assert await used_today(store, account.id) == LEASE_MIN_SEEN


async def test_a_lease_granted_after_its_account_changed_is_never_used(
    store: RedisStore,
) -> None:
    """A lease asked for before `klawd:invalidate` and granted after it was taken under what
    changed: it is given back as soon as it comes, and the next admissions are exact."""
    account = await store.create_account("changed in flight", "free", CREDIT)
    limiter = RedisLimiter(store, Clock())
    await warm(limiter, account.id)
    assert limiter.admit_leased(account.id, BIG, RESERVE) is None  # (counted, as Meter.start)
    sent = limiter.send_admit(account.id, BIG, RESERVE)  # asks for a lease
    assert sent is not None
    limiter.end_leases(account.id)  # the change arrives while the call travels
    asking = limiter.admission_of(await sent[0], account.id, RESERVE)
    assert asking is not None and asking.admitted
    assert limiter.admit_leased(account.id, BIG, RESERVE) is None
    await returned(limiter)
    assert await used_today(store, account.id) == LEASE_MIN_SEEN
    assert await credits(store, account.id) == CREDIT - LEASE_MIN_SEEN * RESERVE
    assert await store._call("HLEN", f"{_acct(account.id)}:leases") == 0


async def test_two_failed_lease_calls_in_flight_are_each_named_in_their_error(
    store: RedisStore,
) -> None:
    """Two calls that asked for a lease and failed, both replied before either is read: each
    error names the lease's function (the limiter kept only the last such reply, so the first
    was named `klawd_admit_v3`)."""
    limiter = RedisLimiter(store, Clock())
    sent = []
    for name in ("broken leases a", "broken leases b"):
        account = await store.create_account(name, "free", CREDIT)
        await warm(limiter, account.id)
        await store._call("SET", f"{_acct(account.id)}:leases", "not a hash")
        assert limiter.admit_leased(account.id, BIG, RESERVE) is None
        call = limiter.send_admit(account.id, BIG, RESERVE)  # asks for a lease
        assert call is not None
        sent.append((account.id, call))
    replies = [(account_id, await call[0]) for account_id, call in sent]
    for account_id, reply in replies:
        with pytest.raises(StoreError) as failed:
            limiter.admission_of(reply, account_id, RESERVE)
        assert str(failed.value).startswith("redis function klawd_admit_lease_v1 failed:")


async def test_a_failed_lease_call_is_named_in_its_error(store: RedisStore) -> None:
    """The error of a call that asked for a lease names the lease's function, not
    `klawd_admit_v3` (a Redis reply error: here the account's leases hash of the wrong type)."""
    account = await store.create_account("broken leases", "free", CREDIT)
    limiter = RedisLimiter(store, Clock())
    await warm(limiter, account.id)
    await store._call("SET", f"{_acct(account.id)}:leases", "not a hash")
    assert limiter.admit_leased(account.id, BIG, RESERVE) is None
    sent = limiter.send_admit(account.id, BIG, RESERVE)  # asks for a lease
    assert sent is not None
    reply = await sent[0]
    with pytest.raises(StoreError) as failed:
        limiter.admission_of(reply, account.id, RESERVE)
    assert str(failed.value).startswith("redis function klawd_admit_lease_v1 failed:")
    # an admission that asks for no lease (an account this worker has not seen) as before
    plain = await store.create_account("broken quota", "free", CREDIT)
    await store._call("SET", f"{_acct(plain.id)}:rpd", "not a hash")
    exact = limiter.send_admit(plain.id, BIG, RESERVE)
    assert exact is not None
    with pytest.raises(StoreError) as exact_failed:
        limiter.admission_of(await exact[0], plain.id, RESERVE)
    assert str(exact_failed.value).startswith("redis function klawd_admit_v3 failed:")


@pytest.mark.parametrize("server", ["redis_server", "redis_cluster"])
async def test_the_lease_functions_on_one_redis_and_on_a_cluster(
    request: pytest.FixtureRequest, server: str
) -> None:
    """`klawd_admit_lease_v1` and `klawd_lease_return_v1` called directly (on a Redis Cluster the
    worker does not lease: its admissions go through redis-py, awaited, as before): every key is
    the account's, in one slot."""
    servers: RedisServer | RedisClusterServers = request.getfixturevalue(server)
    servers.flush()
    opened = open_store(servers.url, reservation_hold_s=60.0)
    assert isinstance(opened, RedisStore)
    try:
        account = await opened.create_account("direct", "free", CREDIT)
        acct = _acct(account.id)
        keys = [f"{acct}:rpm", f"{acct}:rpd", f"{acct}:tpm", f"{acct}:credits", f"{acct}:holds"]
        reply = await opened.fcall(
            "klawd_admit_lease_v1",
            [*keys, f"{acct}:leases"],
            [1_000_000, 1_000_000, 0, RESERVE, 1, "h1", 60_000, 10, 10 * RESERVE, 250, "Lone"],
        )
        assert reply[0] == 0 and reply[11] == 10 and 0 < reply[12] <= 250
        assert await credits(opened, account.id) == CREDIT - 11 * RESERVE
        assert await used_today(opened, account.id) == 11
        given = await opened.fcall(
            "klawd_lease_return_v1",
            [f"{acct}:rpm", f"{acct}:rpd", f"{acct}:credits", f"{acct}:holds", f"{acct}:leases"],
            ["Lone", 7, 7 * RESERVE, 1_000_000, reply[13], 0, 0],
        )
        assert given == 1
        assert await credits(opened, account.id) == CREDIT - 4 * RESERVE
        assert await used_today(opened, account.id) == 4
        assert await opened._call("HGET", f"{acct}:leases", "Lone") == str(3 * RESERVE).encode()
    finally:
        await opened.close()


async def test_a_lease_takes_from_the_keys_own_limits_too_and_gives_back_to_them(
    store: RedisStore,
) -> None:
    account = await store.create_account("keyed", "free", CREDIT)
    key = KeyGate("key_k", DAY, requests_per_minute=1_000_000, requests_per_day=1_000_000)
    clock = Clock()
    limiter = RedisLimiter(store, clock)
    for _ in range(LEASE_MIN_SEEN):  # the last asks for a lease
        assert (await admit(limiter, account.id, key=key)).admitted
    key_day = f"{_acct(account.id)}:krpd:key_k"
    assert int(await store._call("HGET", key_day, "count")) == 2 * LEASE_MIN_SEEN
    leased = limiter.admit_leased(account.id, BIG, RESERVE, key)
    assert leased is not None and leased.hold_id.startswith("L")
    await returned(limiter)
    assert int(await store._call("HGET", key_day, "count")) == LEASE_MIN_SEEN + 1
    assert await used_today(store, account.id) == LEASE_MIN_SEEN + 1


async def reserved_by_key(store: RedisStore, account_id: str, key_id: str) -> list[int]:
    """What is reserved against the key's budget in its day, month and total."""
    return [
        int(await store._call("HGET", spend, "r") or 0)
        for spend in _spend_keys(account_id, key_id, DAY)
    ]


async def test_a_lease_of_a_budgeted_key_is_reserved_against_its_budgets_too(
    store: RedisStore,
) -> None:
    account = await store.create_account("budgeted", "free", CREDIT)
    key = KeyGate("key_b", DAY, budget=KeyBudget(day_micros=CREDIT, total_micros=CREDIT))
    clock = Clock()
    limiter = RedisLimiter(store, clock)
    for _ in range(LEASE_MIN_SEEN):  # the last asks for a lease
        assert (await admit(limiter, account.id, key=key)).admitted
    # the lease's credit is reserved against the key's three periods as well as the balance
    assert await reserved_by_key(store, account.id, "key_b") == [2 * LEASE_MIN_SEEN * RESERVE] * 3
    leased = [limiter.admit_leased(account.id, BIG, RESERVE, key) for _ in range(2)]
    assert all(a is not None and a.key_reserved_micros == RESERVE for a in leased)
    hold = leased[0].hold_id  # type: ignore[union-attr]
    assert hold.startswith("L") and hold.endswith(f"|0|key_b|{DAY}")
    await returned(limiter)
    # the unused rest back from the key's periods: the sent ones' and the two leased remain
    assert await reserved_by_key(store, account.id, "key_b") == [(LEASE_MIN_SEEN + 2) * RESERVE] * 3
    await store.settle(
        [entry(a, account.id, 300, n, "key_b") for n, a in enumerate(leased) if a is not None]
    )
    assert await reserved_by_key(store, account.id, "key_b") == [LEASE_MIN_SEEN * RESERVE] * 3
    spent = await store._call("HGET", _spend_keys(account.id, "key_b", DAY)[0], "s")
    assert int(spent) == 600
    assert await store._call("EXISTS", f"{_acct(account.id)}:leases") == 0
    assert await credits(store, account.id) == CREDIT - LEASE_MIN_SEEN * RESERVE - 600


async def test_near_a_key_budget_no_lease_is_granted_and_the_refusal_is_exact(
    store: RedisStore,
) -> None:
    budget = 4 * LEASE_MIN_SEEN * RESERVE  # after the asking request, < 4 leases' credit
    account = await store.create_account("tight", "free", CREDIT)
    key = KeyGate("key_t", DAY, budget=KeyBudget(month_micros=budget))
    clock = Clock()
    limiter = RedisLimiter(store, clock)
    outcomes = []
    for _ in range(budget // RESERVE + 2):
        outcomes.append((await admit(limiter, account.id, key=key)).outcome)
        clock.now += LEASE_LIFE_S / (2 * LEASE_MIN_SEEN)
    assert outcomes == ["admitted"] * (budget // RESERVE) + ["key_budget_exceeded"] * 2
    assert await store._call("EXISTS", f"{_acct(account.id)}:leases") == 0


async def test_a_dead_workers_lease_of_a_budgeted_key_is_given_back_to_its_budgets(
    store: RedisStore,
) -> None:
    account = await store.create_account("died-budgeted", "free", CREDIT)
    key = KeyGate("key_d", DAY, budget=KeyBudget(total_micros=CREDIT))
    clock = Clock()
    limiter = RedisLimiter(store, clock)
    for _ in range(LEASE_MIN_SEEN):
        assert (await admit(limiter, account.id, key=key)).admitted
    assert limiter.admit_leased(account.id, BIG, RESERVE, key) is not None
    for seen in limiter._seen.values():  # the worker dies: nothing given back, nothing settled
        if seen.lease is not None and seen.lease.timer is not None:
            seen.lease.timer.cancel()
        seen.lease = None
    turns = polls_async(BOUND_S, 0.25)
    while (await store.get_account(account.id)).credits_micros != CREDIT:  # type: ignore[union-attr]
        assert await anext(turns, None) is not None, "the lease's hold was not given back"
    assert await reserved_by_key(store, account.id, "key_d") == [0, 0, 0]
    assert await store._call("ZCARD", f"{_acct(account.id)}:holds") == 0


async def test_admissions_arriving_while_a_lease_travels_wait_for_it_and_are_admitted_from_it(
    store: RedisStore,
) -> None:
    """A burst: the requests that come while the lease asked for is on its way wait for its
    reply (before it they would each send an exact admission), as many as it asked for; the
    others are sent at once."""
    account = await store.create_account("burst", "free", CREDIT)
    clock = Clock()
    limiter = RedisLimiter(store, clock)
    await warm(limiter, account.id)
    assert limiter.admit_leased(account.id, BIG, RESERVE) is None
    sent = limiter.send_admit(account.id, BIG, RESERVE)  # asks for a lease of LEASE_MIN_SEEN
    assert sent is not None
    waits = []
    for _ in range(LEASE_MIN_SEEN):
        assert limiter.admit_leased(account.id, BIG, RESERVE) is None  # none held yet
        asked = limiter.lease_asked(account.id, BIG)
        assert asked is not None
        waits.append(asked)
    # one more than the lease asked for: not kept waiting, sent now
    assert limiter.admit_leased(account.id, BIG, RESERVE) is None
    assert limiter.lease_asked(account.id, BIG) is None
    await within(asyncio.gather(*waits), BOUND_S)
    assert limiter.admission_of(await sent[0], account.id, RESERVE) is not None
    sent_after = 0
    from_lease = []
    for _ in waits:  # each waiter goes on as `Meter.start` has it
        leased = limiter.admit_leased(account.id, BIG, RESERVE, counted=True)
        if leased is None:
            sent_after += 1
            assert (await admit(limiter, account.id)).admitted
        else:
            from_lease.append(leased)
    # the lease half used, one asks for the next one, as without waiting; the others are
    # admitted from the lease, with no call of their own
    assert sent_after == 1
    assert len(from_lease) == LEASE_MIN_SEEN - 1
    assert all(a.admitted and a.hold_id.startswith("L") for a in from_lease)
    assert len({a.hold_id for a in from_lease}) == 1
    await returned(limiter)
    # the warm-up, the two askers and the first lease's requests used; the rest given back
    assert await used_today(store, account.id) == LEASE_MIN_SEEN + 1 + len(from_lease)


async def test_waiting_for_a_lease_cancelled_cancels_nothing_else(store: RedisStore) -> None:
    account = await store.create_account("burst cancelled", "free", CREDIT)
    limiter = RedisLimiter(store, Clock())
    await warm(limiter, account.id)
    assert limiter.admit_leased(account.id, BIG, RESERVE) is None
    sent = limiter.send_admit(account.id, BIG, RESERVE)
    assert sent is not None
    first, second = limiter.lease_asked(account.id, BIG), limiter.lease_asked(account.id, BIG)
    assert first is not None and second is not None
    waiting = asyncio.ensure_future(first)
    await asyncio.sleep(0)
    waiting.cancel()
    await within(second, BOUND_S)  # the other waiter still gets the answer
    assert limiter.admission_of(await sent[0], account.id, RESERVE) is not None
    leased = limiter.admit_leased(account.id, BIG, RESERVE, counted=True)
    assert leased is not None and leased.hold_id.startswith("L")
    await returned(limiter)


async def test_waiters_for_a_lease_not_granted_are_admitted_exactly_never_beyond_the_limit(
    store: RedisStore,
) -> None:
    account = await store.create_account("burst near a limit", "free", CREDIT)
    limit = 3 * LEASE_MIN_SEEN  # a lease of LEASE_MIN_SEEN needs 4 times that left
    spec = LimitSpec(requests_per_minute=limit, requests_per_day=1_000_000)
    limiter = RedisLimiter(store, Clock())
    for _ in range(LEASE_MIN_SEEN - 1):
        assert (await admit(limiter, account.id, spec)).admitted
    assert limiter.admit_leased(account.id, spec, RESERVE) is None
    sent = limiter.send_admit(account.id, spec, RESERVE)  # asks, and is refused a lease
    assert sent is not None
    waits = [limiter.lease_asked(account.id, spec) for _ in range(LEASE_MIN_SEEN)]
    assert all(w is not None for w in waits)
    assert limiter.admission_of(await sent[0], account.id, RESERVE) is not None
    outcomes = await asyncio.gather(*(admit(limiter, account.id, spec) for _ in range(limit)))
    for wait in waits:
        await within(wait, BOUND_S)  # type: ignore[arg-type]
    # every one decided exactly: the limit's requests admitted, none beyond
    assert sum(a.admitted for a in outcomes) == limit - LEASE_MIN_SEEN
    assert await used_today(store, account.id) == limit
    assert await store._call("EXISTS", f"{_acct(account.id)}:leases") == 0
    await returned(limiter)


async def test_a_bursts_lease_is_sized_by_its_rate_within_the_per_minute_limit(
    store: RedisStore,
) -> None:
    """Requests 1 ms apart: the lease asked for covers a lease's life at that rate, not the
    few requests seen yet; never more than the per-minute limit allows in a lease's life; and
    once refused (near a bound: here the day's quota), the next is sized by the count."""
    clock = Clock()

    async def asked_for(spec: LimitSpec, name: str) -> tuple[str, int]:
        account = await store.create_account(name, "free", CREDIT)
        limiter = RedisLimiter(store, clock)
        for _ in range(LEASE_MIN_SEEN):
            await admit(limiter, account.id, spec)  # the last one asks
            clock.now += 0.001
        taken = await used_today(store, account.id) - LEASE_MIN_SEEN
        await returned(limiter)
        return account.id, taken

    # seven intervals of 1 ms: 1,000 a second, 250 in a lease's life
    assert (await asked_for(BIG, "fast"))[1] == min(round(LEASE_LIFE_S / 0.001), LEASE_MAX)
    per_minute = LimitSpec(requests_per_minute=24_000, requests_per_day=1_000_000)
    assert (await asked_for(per_minute, "capped"))[1] == round(24_000 * LEASE_LIFE_S / 60)
    # a day's quota a lease of the rate's size would come near: refused, then the count's
    small_day = LimitSpec(requests_per_minute=1_000_000, requests_per_day=800)
    account = await store.create_account("small day", "free", CREDIT)
    limiter = RedisLimiter(store, clock)
    for _ in range(LEASE_MIN_SEEN):
        await admit(limiter, account.id, small_day)  # the last one asks for 250: refused
        clock.now += 0.001
    assert await used_today(store, account.id) == LEASE_MIN_SEEN
    await admit(limiter, account.id, small_day)  # asks for as many as the window saw
    assert await used_today(store, account.id) == 2 * (LEASE_MIN_SEEN + 1)
    await returned(limiter)
