"""One contract, two stores: SQLite (embedded) and a real redis-server. Same tests, same answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from gateway.limits import LimitSpec
from gateway.store.base import (
    DELIVERIES_KEPT,
    CustomLimits,
    Delivery,
    DeliveryAttempt,
    Store,
    UsageEntry,
    User,
    Webhook,
    open_store,
)
from tests.live_bound import polls_async
from tests.redis_server import RedisClusterServers, RedisServer

BOUND_S = 30  # a polling wait's hang guard, in running time (never a timing assertion)


def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/contract.db"
    server: RedisServer | RedisClusterServers = request.getfixturevalue(
        "redis_server" if request.param == "redis" else "redis_cluster"
    )
    server.flush()
    return server.url


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    opened = open_store(store_url(request, tmp_path))
    yield opened
    await opened.close()


@pytest.fixture(params=["redis", "redis-cluster"])
async def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return store_url(request, tmp_path)


async def test_changes_are_announced_to_every_other_process(shared_url: str) -> None:
    """What one replica changes, every other replica's caches hear about (pub/sub)."""
    writer, listener = open_store(shared_url), open_store(shared_url)
    heard: list[tuple[str, str]] = []
    try:
        listener.on_invalidate(lambda kind, ident: heard.append((kind, ident)))
        # the subscription confirmed: the listener drops every cache then ("all"), and hears
        # what is published after (a fixed 0.3 s was not always enough on a loaded machine)
        async for _ in polls_async(BOUND_S, 0.02):
            if ("all", "") in heard:
                break
        assert ("all", "") in heard, heard
        account = await writer.create_account("x", "free", 0)
        key = await writer.create_key(account.id, "k", "sk-klawd-abcd", "e" * 64, None)
        await writer.update_account(account.id, plan="pro")
        await writer.revoke_key(key.id, 5)
        # (a Redis listener also drops every cache once subscribed)
        async for _ in polls_async(BOUND_S, 0.02):
            if ("account", account.id) in heard and ("key", key.id) in heard:
                break
        assert ("account", account.id) in heard
        assert ("key", key.id) in heard
    finally:
        await writer.close()
        await listener.close()


def entry(account_id: str, n: int, cost: int, reserved: int, model: str = "m/x") -> UsageEntry:
    return UsageEntry(
        id=f"use_{account_id}_{n}",
        ts=1_795_000_000.0 + n,
        day="2026-11-26",
        account_id=account_id,
        key_id="key_1",
        model=model,
        provider="m",
        prompt_tokens=10 * n,
        completion_tokens=n,
        images=0,
        cost_micros=cost,
        reserved_micros=reserved,
        latency_ms=5,
        status=200,
        request_id=f"req_{n}",
        stream=False,
    )


async def test_accounts_round_trip(store: Store) -> None:
    assert await store.count_accounts() == 0
    account = await store.create_account("Ada", "free", 5_000_000)
    assert await store.count_accounts() == 1
    assert await store.get_account(account.id) == account
    assert await store.get_account("acct_missing") is None
    updated = await store.update_account(
        account.id,
        plan="pro",
        limits=CustomLimits(requests_per_day=7),
        add_credits_micros=250,
    )
    assert updated is not None
    assert updated.plan == "pro"
    assert updated.limits == CustomLimits(requests_per_day=7)
    assert updated.credits_micros == 5_000_250
    assert await store.update_account("acct_missing", plan="pro") is None


async def test_keys_are_found_by_hash_and_revoked(store: Store) -> None:
    account = await store.create_account("k", "free", 0)
    key = await store.create_key(account.id, "laptop", "sk-klawd-abcd", "f" * 64, None)
    assert await store.key_by_hash("f" * 64) == key
    assert await store.key_by_hash("0" * 64) is None
    revoked = await store.revoke_key(key.id, 1234)
    assert revoked is not None and revoked.revoked_at == 1234
    again = await store.revoke_key(key.id, 9999)
    assert again is not None and again.revoked_at == 1234, "revocation time is kept"
    found = await store.key_by_hash("f" * 64)
    assert found is not None and found.revoked_at == 1234
    assert await store.revoke_key("key_missing", 1) is None


async def test_reservation_never_drives_balance_below_zero(store: Store) -> None:
    account = await store.create_account("r", "free", 1000)
    results = await asyncio.gather(*(store.reserve_credits(account.id, 300) for _ in range(10)))
    assert sum(results) == 3
    balance = await store.get_account(account.id)
    assert balance is not None and balance.credits_micros == 100
    await store.release_credits(account.id, 300)
    after = await store.get_account(account.id)
    assert after is not None and after.credits_micros == 400


async def test_settling_releases_the_rest_and_records_usage(store: Store) -> None:
    account = await store.create_account("s", "free", 1000)
    assert await store.reserve_credits(account.id, 600)
    await store.settle([entry(account.id, 1, cost=150, reserved=600)])
    settled = await store.get_account(account.id)
    assert settled is not None and settled.credits_micros == 850
    rows = await store.usage(account.id, "2026-11-26", "2026-11-26")
    assert [
        (r.model, r.requests, r.prompt_tokens, r.completion_tokens, r.cost_micros) for r in rows
    ] == [("m/x", 1, 10, 1, 150)]


async def test_settling_more_than_reserved_stops_at_zero(store: Store) -> None:
    account = await store.create_account("z", "free", 100)
    assert await store.reserve_credits(account.id, 100)
    await store.settle([entry(account.id, 1, cost=500, reserved=100)])
    after = await store.get_account(account.id)
    assert after is not None and after.credits_micros == 0
    rows = await store.usage(account.id, "2026-11-26", "2026-11-26")
    assert rows[0].cost_micros == 500, "the ledger keeps the true cost"


async def test_settling_an_entry_twice_applies_it_once(store: Store) -> None:
    """A batch retried after a lost reply must not bill twice."""
    account = await store.create_account("i", "free", 1000)
    assert await store.reserve_credits(account.id, 300)
    twice = entry(account.id, 1, cost=100, reserved=300)
    await store.settle([twice])
    await store.settle([twice, entry(account.id, 2, cost=50, reserved=0)])
    after = await store.get_account(account.id)
    assert after is not None and after.credits_micros == 850
    rows = await store.usage(account.id, "2026-11-26", "2026-11-26")
    assert [(r.requests, r.cost_micros) for r in rows] == [(2, 150)]


async def test_a_large_batch_with_a_repeat_settles_each_entry_once_per_account(
    store: Store,
) -> None:
    """More entries than one ledger lookup holds, two accounts, and one entry twice in the
    batch (a replay): each account pays the sum of its distinct entries, once."""
    first = await store.create_account("b1", "free", 1_000_000)
    second = await store.create_account("b2", "free", 1_000_000)
    batch = [
        entry(first.id if n % 3 else second.id, n, cost=n % 7, reserved=0) for n in range(1201)
    ]
    batch.insert(600, batch[10])
    await store.settle(batch)
    await store.settle(batch[:50])
    for account in (first, second):
        distinct = [e for e in batch[:600] + batch[601:] if e.account_id == account.id]
        after = await store.get_account(account.id)
        assert after is not None
        assert after.credits_micros == 1_000_000 - sum(e.cost_micros for e in distinct)
        rows = await store.usage(account.id, "2026-11-26", "2026-11-26")
        assert sum(r.requests for r in rows) == len(distinct)


async def test_usage_is_grouped_by_day_and_model(store: Store) -> None:
    account = await store.create_account("u", "free", 0)
    await store.settle(
        [
            entry(account.id, 1, 10, 0, "a/1"),
            entry(account.id, 2, 20, 0, "a/1"),
            entry(account.id, 3, 30, 0, "b/2"),
        ]
    )
    rows = await store.usage(account.id, "2026-11-20", "2026-11-30")
    assert [(r.day, r.model, r.requests, r.cost_micros) for r in rows] == [
        ("2026-11-26", "a/1", 2, 30),
        ("2026-11-26", "b/2", 1, 30),
    ]
    assert await store.usage(account.id, "2026-11-27", "2026-11-30") == []


async def test_limiter_admits_the_burst_then_denies(store: Store) -> None:
    account = await store.create_account("l", "free", 0)
    limiter = store.limiter()
    spec = LimitSpec(requests_per_minute=3, requests_per_day=100)
    outcomes = [(await limiter.admit(account.id, spec, 0)).outcome for _ in range(6)]
    assert outcomes == ["admitted"] * 3 + ["rate_limited"] * 3
    denied = await limiter.admit(account.id, spec, 0)
    assert 0 < denied.retry_after_s <= 20.5
    assert denied.remaining_requests == 0 and denied.limit_requests == 3


async def test_concurrent_burst_admits_exactly_the_limit(store: Store) -> None:
    account = await store.create_account("c", "free", 0)
    limiter = store.limiter()
    spec = LimitSpec(requests_per_minute=5, requests_per_day=100)
    results = await asyncio.gather(*(limiter.admit(account.id, spec, 0) for _ in range(40)))
    assert sum(r.admitted for r in results) == 5


async def test_daily_quota_caps_admissions(store: Store) -> None:
    account = await store.create_account("d", "free", 0)
    limiter = store.limiter()
    spec = LimitSpec(requests_per_minute=100, requests_per_day=2)
    outcomes = [(await limiter.admit(account.id, spec, 0)).outcome for _ in range(4)]
    assert outcomes == ["admitted", "admitted", "rate_limited", "rate_limited"]
    denied = await limiter.admit(account.id, spec, 0)
    assert denied.remaining_requests_day == 0
    assert denied.retry_after_s > 0, "until the next 00:00 UTC"


async def test_denied_request_consumes_nothing(store: Store) -> None:
    account = await store.create_account("n", "free", 100)
    limiter = store.limiter()
    spec = LimitSpec(requests_per_minute=2, requests_per_day=100)
    broke = await limiter.admit(account.id, spec, 500)
    assert broke.outcome == "insufficient_credits"
    peek = await limiter.peek(account.id, spec)
    assert peek.remaining_requests == 2 and peek.remaining_requests_day == 100
    after = await store.get_account(account.id)
    assert after is not None and after.credits_micros == 100
    assert (await limiter.admit(account.id, spec, 40)).admitted
    assert (await limiter.admit(account.id, spec, 40)).admitted
    limited = await limiter.admit(account.id, spec, 10)
    assert limited.outcome == "rate_limited"
    final = await store.get_account(account.id)
    assert final is not None and final.credits_micros == 20, "the denied request reserved nothing"
    assert (await limiter.peek(account.id, spec)).remaining_requests_day == 98


async def test_peek_consumes_nothing(store: Store) -> None:
    account = await store.create_account("p", "free", 0)
    limiter = store.limiter()
    spec = LimitSpec(requests_per_minute=1, requests_per_day=1)
    for _ in range(5):
        assert (await limiter.peek(account.id, spec)).admitted
    assert (await limiter.admit(account.id, spec, 0)).admitted


async def test_peek_of_a_spent_minute_says_rate_limited_with_its_wait(store: Store) -> None:
    account = await store.create_account("q", "free", 0)
    limiter = store.limiter()
    spec = LimitSpec(requests_per_minute=1, requests_per_day=10)
    assert (await limiter.admit(account.id, spec, 0)).admitted
    peek = await limiter.peek(account.id, spec)
    assert peek.outcome == "rate_limited" and not peek.limited_by_key
    assert (peek.limit_requests, peek.remaining_requests) == (1, 0)
    assert (peek.limit_requests_day, peek.remaining_requests_day) == (10, 9)
    assert 0 < peek.retry_after_s <= 60 and 0 < peek.reset_requests_s <= 60
    assert peek.reserved_micros == 0


async def test_tokens_per_minute_debt_blocks_until_repaid(store: Store) -> None:
    account = await store.create_account("t", "free", 0)
    limiter = store.limiter()
    spec = LimitSpec(requests_per_minute=100, requests_per_day=100, tokens_per_minute=600)
    assert (await limiter.admit(account.id, spec, 0)).admitted
    await limiter.charge_tokens(account.id, spec, 1200)  # 600 tokens of debt: 60 s to repay
    blocked = await limiter.admit(account.id, spec, 0)
    assert blocked.outcome == "rate_limited"
    assert 55 <= blocked.retry_after_s <= 61


# -- webhooks, deliveries, invoices, users ---------------------------------------------------------
def delivery(account_id: str, ident: str, created: float, next_at: float) -> Delivery:
    return Delivery(
        id=ident,
        account_id=account_id,
        type="webhook.test",
        body=f'{{"id":"{ident}"}}',
        created_at=created,
        status="pending",
        next_attempt_at=next_at,
    )


def hook(account_id: str, url: str = "https://example.com/hook") -> Webhook:
    return Webhook(account_id, url, ("usage.updated",), "whsec_1", None, None, 100)


async def test_webhook_put_keeps_the_usage_position(store: Store) -> None:
    account = await store.create_account("w", "free", 0)
    assert await store.get_webhook(account.id) is None
    await store.put_webhook(hook(account.id), "7", 41)
    assert await store.get_webhook(account.id) == hook(account.id)
    rotated = Webhook(account.id, "https://b.example/x", (), "whsec_2", "whsec_1", 900, 200)
    await store.put_webhook(rotated, "99", 99)
    assert await store.get_webhook(account.id) == rotated
    assert await store.webhook_usage_state(account.id) == ("7", 41), "set once, on creation"
    assert await store.webhook_accounts() == [account.id]


async def test_usage_since_counts_each_settled_entry_once(store: Store) -> None:
    account = await store.create_account("c", "free", 0)
    start = await store.usage_cursor(account.id)
    await store.settle([entry(account.id, 1, 10, 0, "a/1"), entry(account.id, 2, 20, 0, "b/2")])
    rows, cursor = await store.usage_since(account.id, start)
    assert [(r.model, r.requests, r.prompt_tokens, r.cost_micros) for r in rows] == [
        ("a/1", 1, 10, 10),
        ("b/2", 1, 20, 20),
    ]
    assert cursor == await store.usage_cursor(account.id)
    assert await store.usage_since(account.id, cursor) == ([], cursor)
    await store.settle([entry(account.id, 3, 30, 0, "a/1")])
    rows, _ = await store.usage_since(account.id, cursor)
    assert [(r.model, r.requests) for r in rows] == [("a/1", 1)]


async def test_a_usage_period_is_recorded_once_however_many_schedulers_race(store: Store) -> None:
    account = await store.create_account("p", "free", 0)
    await store.put_webhook(hook(account.id), await store.usage_cursor(account.id), 10)
    results = await asyncio.gather(
        *(
            store.add_usage_event(account.id, 11, f"c{n}", delivery(account.id, f"evt_{n}", 1, 1))
            for n in range(5)
        )
    )
    assert sorted(results) == [False] * 4 + [True]
    cursor, period = await store.webhook_usage_state(account.id) or ("", 0)
    assert period == 11
    assert [d.id for d in await store.list_deliveries(account.id, 10)] == [
        f"evt_{results.index(True)}"
    ]
    assert cursor == f"c{results.index(True)}"
    assert not await store.add_usage_event(account.id, 11, "x", delivery(account.id, "e", 1, 1))


async def test_deliveries_come_due_and_leave_the_queue_when_done(store: Store) -> None:
    account = await store.create_account("d", "free", 0)
    first = delivery(account.id, "evt_a", 100.0, 100.0)
    later = delivery(account.id, "evt_b", 101.0, 500.0)
    assert await store.add_delivery(first)
    assert await store.add_delivery(later)
    assert not await store.add_delivery(first), "an event id is stored once"
    assert [d.id for d in await store.due_deliveries(200.0, 10)] == ["evt_a"]
    attempt = DeliveryAttempt(200.0, 500, None, 3, "oops")
    retry = msgspec.structs.replace(first, next_attempt_at=300.0, attempts=(attempt,))
    await store.save_delivery(retry)
    assert await store.due_deliveries(250.0, 10) == []
    assert await store.due_deliveries(300.0, 10) == [retry]
    done = msgspec.structs.replace(retry, status="delivered")
    await store.save_delivery(done)
    assert [d.id for d in await store.due_deliveries(1000.0, 10)] == ["evt_b"]
    assert await store.list_deliveries(account.id, 10) == [later, done], "newest first"


async def test_old_deliveries_are_dropped_beyond_the_kept_number(store: Store) -> None:
    account = await store.create_account("o", "free", 0)
    for n in range(DELIVERIES_KEPT + 3):
        assert await store.add_delivery(delivery(account.id, f"evt_{n:04d}", float(n), 1e12))
    kept = await store.list_deliveries(account.id, DELIVERIES_KEPT + 10)
    assert len(kept) == DELIVERIES_KEPT
    assert kept[-1].id == "evt_0003"


async def test_an_invoice_is_paid_once_with_its_event(store: Store) -> None:
    account = await store.create_account("i", "free", 0)
    invoice = await store.create_invoice(account.id, 12_500_000, "November")
    assert invoice.status == "open" and invoice.amount_micros == 12_500_000
    assert await store.get_invoice(invoice.id) == invoice
    assert await store.get_invoice("inv_missing") is None
    event = delivery(account.id, "evt_paid", 5.0, 5.0)
    paid, changed = await store.pay_invoice(invoice, 77, event)
    assert changed and paid.status == "paid" and paid.paid_at == 77
    again, changed_again = await store.pay_invoice(invoice, 88, delivery(account.id, "evt_2", 6, 6))
    assert not changed_again and again.paid_at == 77
    assert [d.id for d in await store.list_deliveries(account.id, 10)] == ["evt_paid"]
    assert await store.get_invoice(invoice.id) == paid
    later = await store.create_invoice(account.id, 1, "")
    listed = await store.list_invoices(account.id)
    assert {i.id for i in listed} == {later.id, invoice.id}
    assert listed == sorted(listed, key=lambda i: (-i.created_at, i.id)), "newest first"
    assert await store.list_invoices("acct_none") == []


async def test_a_deleted_webhook_is_gone_and_no_longer_scheduled(store: Store) -> None:
    account = await store.create_account("x", "free", 0)
    await store.put_webhook(hook(account.id), "0", 1)
    assert await store.delete_webhook(account.id)
    assert not await store.delete_webhook(account.id)
    assert await store.get_webhook(account.id) is None
    assert await store.webhook_usage_state(account.id) is None
    assert await store.webhook_accounts() == []


async def test_users_keys_and_accounts_are_listed(store: Store) -> None:
    account = await store.create_account("u", "free", 0)
    user = User("ada@example.com", account.id, "scrypt$x", 5)
    assert await store.create_user(user)
    assert not await store.create_user(User("ada@example.com", "acct_other", "y", 6))
    assert await store.get_user("ada@example.com") == user
    assert await store.get_user("bob@example.com") is None
    one = await store.create_key(account.id, "one", "sk-klawd-aaaa", "1" * 64, None)
    two = await store.create_key(account.id, "two", "sk-klawd-bbbb", "2" * 64, None)
    assert {k.id for k in await store.list_keys(account.id)} == {one.id, two.id}
    assert [a.id for a in await store.list_accounts(10)] == [account.id]


async def test_replicas_share_one_secret_and_one_lease_holder(shared_url: str) -> None:
    first, second = open_store(shared_url), open_store(shared_url)
    try:
        assert await first.shared_secret("session", "aaa") == "aaa"
        assert await second.shared_secret("session", "bbb") == "aaa"
        assert await first.lease("scheduler", "one", 5)
        assert not await second.lease("scheduler", "two", 5)
        assert await first.lease("scheduler", "one", 5), "the holder renews"
        assert not await first.lease("scheduler", "one", 0), "released"
        assert await second.lease("scheduler", "two", 5)
    finally:
        await first.close()
        await second.close()


async def test_a_burst_beyond_the_connection_pool_waits_instead_of_failing(
    shared_url: str,
) -> None:
    """600 concurrent calls against a pool of 256 connections: every one is answered."""
    store = open_store(shared_url)
    try:
        account = await store.create_account("burst", "free", 600)
        results = await asyncio.gather(*(store.reserve_credits(account.id, 1) for _ in range(600)))
        assert all(results)
        after = await store.get_account(account.id)
        assert after is not None and after.credits_micros == 0
    finally:
        await store.close()
