"""The admission's call on Redis (gateway/store/redis_limiter.py): a key without limits or a
budget is admitted by the account's share of `klawd_admit_v3` alone (and the account's holds),
with the same decisions and the same keys written as when its share is sent; a sent admission's
call, packed from cached parts, is byte for byte the call `admit` sends."""

from __future__ import annotations

from typing import cast

import hiredis
import pytest
import redis.asyncio as aioredis

from gateway.limits import KeyBudget, KeyGate, LimitSpec
from gateway.store import redis_limiter
from gateway.store.redis import RedisStore
from gateway.store.redis_limiter import RedisLimiter, _acct
from tests.redis_server import RedisServer

SPEC = LimitSpec(requests_per_minute=3, requests_per_day=5)
DAY = "2026-12-04"


async def names(client: aioredis.Redis, account_id: str) -> set[str]:
    prefix = _acct(account_id)
    return {
        raw.decode().removeprefix(prefix)
        async for raw in client.scan_iter(match=f"{prefix}*", count=1000)
    }


def decisions(reply: list[object]) -> list[int]:
    """Outcome, requests left, requests left today, balance, limits, refused by the key: all but
    the times (which move with the clock between two calls)."""
    return [int(reply[i]) for i in (0, 2, 4, 5, 6, 7, 8)]  # type: ignore[call-overload]


async def test_a_key_without_limits_or_budget_is_admitted_by_the_account_share_alone(
    redis_server: RedisServer,
) -> None:
    redis_server.flush()
    store = RedisStore(redis_server.url)
    client = aioredis.Redis.from_url(redis_server.url)
    limiter = RedisLimiter(store)
    try:
        lean = await store.create_account("lean", "free", 100)
        full = await store.create_account("full", "free", 100)
        gate = KeyGate("key_plain", DAY)
        keys, head, tail = limiter._call(lean.id, SPEC, True, gate)
        assert len(keys) == 5 and len(tail) == 1  # the account's share only, and its holds
        for attempt in range(7):  # past the per-minute limit, and past the credit
            lean_admission = await limiter.admit(lean.id, SPEC, 30, gate)
            acct = _acct(full.id)
            full_reply = await store.fcall(
                "klawd_admit_v3",
                [f"{acct}:rpm", f"{acct}:rpd", f"{acct}:tpm", f"{acct}:credits"]
                + [f"{acct}:krpm:key_plain", f"{acct}:krpd:key_plain"]
                + [f"{acct}:kspend:key_plain:{p}" for p in (f"d:{DAY}", "m:2026-12", "t")]
                + [f"{acct}:holds"],
                [*head, 30, 1, 0, 0, -1, -1, -1, f"hold{attempt}", 60_000],
            )
            lean_reply = await store.fcall("klawd_admit_v3", keys, [*head, 0, 0, "", 60_000])
            assert decisions(full_reply)[0] == [
                "admitted",
                "rate_limited",
                "insufficient_credits",
                "key_budget_exceeded",
            ].index(lean_admission.outcome)
            assert decisions(full_reply)[1:] == decisions(lean_reply)[1:]
        assert await names(client, lean.id) == await names(client, full.id)
        assert not any(":k" in name for name in await names(client, full.id))
    finally:
        await client.aclose()
        await store.close()


async def test_a_key_with_limits_or_a_budget_sends_its_share(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    limiter = RedisLimiter(store)
    try:
        for gate in (
            KeyGate("key_rpm", DAY, requests_per_minute=2),
            KeyGate("key_rpd", DAY, requests_per_day=2),
            KeyGate("key_budget", DAY, budget=KeyBudget(month_micros=1_000)),
        ):
            keys, _, tail = limiter._call("acct_x", SPEC, True, gate)
            assert len(keys) == 10 and len(tail) == 6  # and the holds
        keys, _, tail = limiter._call("acct_x", SPEC, False, None)
        assert len(keys) == 5 and tail == [0]
    finally:
        await store.close()


class _Sent:
    """A store that keeps what `send_admit` sends."""

    reservation_hold_ms = 3_600_000
    sends_packed = True
    lean = True  # (only the lean client's calls are sent packed)

    def __init__(self) -> None:
        self.payloads: list[bytes] = []

    def send_packed_fcall(self, payload: bytes, undo: object = None) -> None:
        self.payloads.append(payload)


def test_a_sent_admission_is_the_call_fcall_packs(monkeypatch: pytest.MonkeyPatch) -> None:
    """`send_admit` packs its call from cached parts around the reservation and the hold: the
    bytes hiredis packs for the call `admit` makes, for every shape of call (the account's share
    alone, a key's share, a peek-free reservation of nothing), twice from the cache."""
    store = _Sent()
    limiter = RedisLimiter(cast(RedisStore, store))
    monkeypatch.setattr(redis_limiter.ids, "token_hex", lambda n: "5e" * n)
    gates = [
        None,
        KeyGate("key_plain", DAY),
        KeyGate("key_all", DAY, requests_per_minute=2, requests_per_day=9,
                budget=KeyBudget(day_micros=7, month_micros=1_000, total_micros=10**12)),
        KeyGate("key_month", DAY, budget=KeyBudget(month_micros=0)),
    ]  # fmt: skip
    for spec in (SPEC, LimitSpec(requests_per_minute=10**9, requests_per_day=10**9,
                                 tokens_per_minute=5_000)):  # fmt: skip
        for gate in gates:
            for reserve in (0, 1, 200, 10**15, 200):
                limiter.send_admit("acct_x", spec, reserve, gate)
                keys, head, tail = limiter._call("acct_x", spec, True, gate)
                hold = "5e" * 8 if reserve else ""
                whole = ("FCALL", "klawd_admit_v3", len(keys), *keys, *head, reserve, *tail,
                         hold, store.reservation_hold_ms)  # fmt: skip
                assert store.payloads[-1] == hiredis.pack_command(whole)


async def test_a_daily_quota_expires_at_the_midnight_after_tomorrows(
    redis_server: RedisServer,
) -> None:
    """The account's and the API key's daily quota hashes expire at the midnight after
    tomorrow's (UTC, Redis time): set by the day's first admission, kept by the day's others,
    moved by the first admission of a new day (a hash left from yesterday, counting again)."""
    redis_server.flush()
    store = RedisStore(redis_server.url)
    client = aioredis.Redis.from_url(redis_server.url)
    limiter = RedisLimiter(store)
    spec = LimitSpec(requests_per_minute=100, requests_per_day=100)
    try:
        account = await store.create_account("quota", "free", 10**9)
        gate = KeyGate("key_q", DAY, requests_per_day=100)
        acct = _acct(account.id)
        quotas = [f"{acct}:rpd", f"{acct}:krpd:key_q"]
        today = (await client.time())[0] // 86_400
        expiry = (today + 2) * 86_400
        for _ in range(3):
            assert (await limiter.admit(account.id, spec, 1, gate)).outcome == "admitted"
            assert [await client.expiretime(key) for key in quotas] == [expiry, expiry]
        for key in quotas:  # yesterday's, expiring at tonight's midnight
            await client.hset(key, mapping={"day": today - 1, "count": 7})
            await client.expireat(key, (today + 1) * 86_400)
        assert (await limiter.admit(account.id, spec, 1, gate)).outcome == "admitted"
        if (await client.time())[0] // 86_400 != today:
            pytest.skip("midnight UTC passed during the test")
        assert [await client.expiretime(key) for key in quotas] == [expiry, expiry]
        for key in quotas:
            assert await client.hmget(key, "day", "count") == [str(today).encode(), b"1"]
    finally:
        await client.aclose()
        await store.close()
