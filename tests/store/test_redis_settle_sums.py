"""`klawd_settle_v17` (the store's first try of a batch since issue 19zzzzzq) applies a batch's
sums at once when none of its entries was settled before, its holds are leases that hold all
their entries and its balance never stops at zero; else it settles entry by entry as
`klawd_settle_v15`. Either way it must leave exactly what v15 leaves: here the same batches go
through v15 into one Redis database and through v17 into another, over the same starting keys
(credits, a credit grant, leases and their holds, an expired hold, key reservations), and every
key of both databases is compared after each batch, with each call's reply."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from gateway.store.base import UsageEntry
from gateway.store.redis import RedisStore, _by_account, _settle_command
from gateway.store.redis_limiter import _acct, _spend_keys
from tests.redis_server import RedisServer

DAYS = ("2026-11-30", "2026-12-01")
ACCOUNTS = ("acct_one", "acct_two")
FAR = 9e12  # a hold's expiry (ms): never, here
# one lease held in the bare form, one in the form with its key and day (admit_lease_v1's)
LEASES = {"Lone": ("Lone|0", 10_000), "Ltwo": (f"Ltwo|0|key_a|{DAYS[0]}", 10_000)}


def entry(account_id: str, n: int, **changes: Any) -> UsageEntry:
    """Entry `n` of an account: two days, two models and none, two keys and none, the leases'
    holds and none, images and key reservations on some."""
    fields: dict[str, Any] = {
        "id": f"use_{account_id}_{n}",
        "ts": 1_795_000_000.0 + n // 7,
        "day": DAYS[n % 2],
        "account_id": account_id,
        "key_id": ["key_a", "key_b", ""][n % 3],
        "model": ["m/x", "m/y", ""][n % 5 % 3],
        "provider": "m",
        "prompt_tokens": 10 * n,
        "completion_tokens": n,
        "images": n % 2,
        "cost_micros": [0, 7, 90, 35][n % 4],
        "reserved_micros": [50, 10, 100][n % 3],
        "latency_ms": 5,
        "status": 200,
        "request_id": f"req_{n}",
        "stream": bool(n % 2),
        "key_reserved_micros": [0, 20, 45][n % 3],
        "hold_id": ["Lone", "", LEASES["Ltwo"][0]][n % 3],
    }
    fields.update(changes)
    return UsageEntry(**fields)


def batch(numbers: range | list[int], **changes: Any) -> list[UsageEntry]:
    """The entries `numbers` of both accounts, interleaved as a recorder's batch is."""
    return [entry(account, n, **changes) for n in numbers for account in ACCOUNTS]


async def start(client: aioredis.Redis, credits: int) -> None:
    """An account's keys before the batches: its credits, a credit grant, the leases' holds and
    amounts, an expired hold (30 micros and the key's reservation: given back by the first
    call), key reservations on every spend period."""
    for account in ACCOUNTS:
        prefix = _acct(account)
        await client.set(f"{prefix}:credits", credits)
        grant = {"grant_seq": 3, "grant": 9_000, "grant_at": 1_700_000_000, "grant_spent": 100}
        await client.hset(prefix, mapping=grant)
        for lease, (member, micros) in LEASES.items():
            await client.hset(f"{prefix}:leases", lease, micros)
            await client.zadd(f"{prefix}:holds", {member: FAR})
        await client.zadd(f"{prefix}:holds", {f"hexp|30|key_b|{DAYS[1]}": 1})
        for key_id in ("key_a", "key_b", "-"):
            for day in DAYS:
                for spend in _spend_keys(account, key_id, day):
                    await client.hset(spend, "r", 400)


async def dump(client: aioredis.Redis) -> dict[bytes, tuple[str, object, int]]:
    """Every key of the database: its type, its value (streams: their records in order, without
    the entries' ids) and its time to live (ms; -1: none)."""
    out: dict[bytes, tuple[str, object, int]] = {}
    async for name in client.scan_iter(count=1000):
        kind = (await client.type(name)).decode()
        value: object
        if kind == "string":
            value = await client.get(name)
        elif kind == "hash":
            value = await client.hgetall(name)
        elif kind == "set":
            value = await client.smembers(name)
        elif kind == "zset":
            value = await client.zrange(name, 0, -1, withscores=True)
        else:
            assert kind == "stream", kind
            value = [fields for _, fields in await client.xrange(name)]
        out[name] = (kind, value, await client.pttl(name))
    return out


async def assert_alike(first: aioredis.Redis, second: aioredis.Redis) -> None:
    """The same keys, types and values, and the same expiries: none on both, or within a minute
    (the two calls ran one after the other, and a frozen run stops the machine between them),
    which tells a marker's ten minutes and a spend period's days from each other and from none."""
    ones, others = await dump(first), await dump(second)
    assert {name: kv[:2] for name, kv in ones.items()} == {
        name: kv[:2] for name, kv in others.items()
    }
    for name, (_, _, ttl) in ones.items():
        other = others[name][2]
        assert (ttl < 0) == (other < 0) and abs(ttl - other) < 60_000, name


async def xlen_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_xlen", {}).get("calls", 0))


class Pair:
    """The v15 database and the v17 database, settled alike."""

    def __init__(self, url: str) -> None:
        self.v15 = aioredis.Redis.from_url(url.rsplit("/", 1)[0] + "/1")
        self.v17 = aioredis.Redis.from_url(url.rsplit("/", 1)[0] + "/2")

    async def settle(self, entries: list[UsageEntry], summed: bool | None) -> None:
        """Both settle `entries` (the store's calls: one an account); v17's calls took the sums'
        path (`summed`: one XLEN a call, where v15's path is a second) or v15's (None: not
        asked, as for a call without sums)."""
        paths = []
        for chunk in _by_account(entries):
            first = await self.v15.execute_command(*_settle_command(chunk, "klawd_settle_v15"))
            before = await xlen_calls(self.v17)
            second = await self.v17.execute_command(*_settle_command(chunk))
            assert second == first
            paths.append(await xlen_calls(self.v17) - before == 1)
        await assert_alike(self.v15, self.v17)
        if summed is not None:
            assert paths == [summed] * len(paths)

    async def resend(self, entries: list[UsageEntry]) -> None:
        """Both settle `entries` again as the recorder's retry does (v16)."""
        for chunk in _by_account(entries):
            command = _settle_command(chunk, "klawd_settle_v16")
            assert await self.v17.execute_command(*command) == await self.v15.execute_command(
                *command
            )
        await assert_alike(self.v15, self.v17)

    async def close(self) -> None:
        await self.v15.aclose()
        await self.v17.aclose()


@pytest.fixture
async def pair(redis_server: RedisServer) -> Pair:
    redis_server.flush()
    store = RedisStore(redis_server.url)
    try:
        await store._ensure_library()
    finally:
        await store.close()
    return Pair(redis_server.url)


async def test_the_sums_leave_what_v15_leaves_batch_after_batch(pair: Pair) -> None:
    """Fresh batches (several accounts, models, keys, days, both lease forms, exact admissions'
    holds and no hold: the sums' path); a batch partly settled before, a replay, a resent batch
    (v16), a hold of several entries, holds given back already, a balance that would stop at
    zero, an id twice in a call (v15's path); the leases used up
    exactly at their last entries (the sums' path: each lease's hash field and hold removed)
    and before them (v15's path), the expired hold given back by the first call, the grant's
    spend growing past its thresholds: the same keys, values, expiries, markers and replies."""
    try:
        for client in (pair.v15, pair.v17):
            await start(client, credits=50_000)
        await pair.settle(batch(range(0, 30)), summed=True)
        await pair.settle(batch(range(30, 60)), summed=True)
        await pair.settle(batch(range(50, 70)), summed=False)  # ten settled before
        await pair.settle(batch(range(0, 10)), summed=False)  # a replay
        await pair.resend(batch(range(60, 80)))  # ten settled before, ten new
        for client in (pair.v15, pair.v17):
            for account in ACCOUNTS:
                await client.zadd(f"{_acct(account)}:holds", {"hplain|5": FAR})
        # one exact admission's hold named by ten entries: the first holds, the others do not
        await pair.settle(batch(range(80, 90), hold_id="hplain|5"), summed=False)
        plain = [msgspec.structs.replace(e, hold_id=f"h{e.id}|50") for e in batch(range(200, 210))]
        for client in (pair.v15, pair.v17):
            for account in ACCOUNTS:
                await client.zadd(
                    f"{_acct(account)}:holds",
                    {e.hold_id: FAR for e in plain if e.account_id == account},
                )
        await pair.settle([*plain[:6], *batch(range(86, 88))], summed=False)  # 86, 87: settled
        await pair.settle(plain[6:], summed=True)  # a hold an entry, each held
        await pair.settle(plain[:4], summed=False)  # a replay: their holds are gone
        await pair.settle([msgspec.structs.replace(e, id=f"again_{e.id}") for e in plain[:4]],
                          summed=False)  # fmt: skip
        await pair.settle(batch(range(90, 95), cost_micros=60_000, reserved_micros=0),
                          summed=False)  # fmt: skip
        await pair.settle([*batch(range(95, 100)), entry(ACCOUNTS[0], 96)], summed=None)
        # each lease's rest taken exactly by the next batch's last entry of it
        leases = await pair.v15.hgetall(f"{_acct(ACCOUNTS[0])}:leases")
        rest = {lease.decode(): int(micros) for lease, micros in leases.items()}
        assert set(rest) == {"Lone", "Ltwo"} and min(rest.values()) > 100
        ending = []
        for n, (lease, (member, _)) in enumerate(LEASES.items()):
            hold = lease if lease == "Lone" else member
            ending += [entry(account, 100 + 2 * n, hold_id=hold, reserved_micros=100)
                       for account in ACCOUNTS]  # fmt: skip
            ending += [entry(account, 101 + 2 * n, hold_id=hold, reserved_micros=rest[lease] - 100)
                       for account in ACCOUNTS]  # fmt: skip
        await pair.settle(ending, summed=True)
        assert await pair.v17.hgetall(f"{_acct(ACCOUNTS[0])}:leases") == {}
        for client in (pair.v15, pair.v17):
            await start(client, credits=50_000)  # the leases again (other keys kept)
        used_up = [entry(account, 110 + n, hold_id="Lone", reserved_micros=4_000)
                   for n in range(4) for account in ACCOUNTS]  # fmt: skip
        await pair.settle(used_up, summed=False)  # the third entry of each uses it up
        await pair.settle(batch(range(120, 150)), summed=False)  # Lone is gone
        await pair.settle(batch(range(150, 180), hold_id=""), summed=True)
    finally:
        await pair.close()


async def test_a_lease_given_back_as_expired_by_the_call_sends_it_to_v15(pair: Pair) -> None:
    """A lease whose hold expired is given back (its hash field removed) by the call's
    `release_holds`, after the markers were read: v17 then settles by v15's path without giving
    back expired holds a second time (at most 16 a call: here 20 expired, so a second give-back
    would show)."""
    try:
        for client in (pair.v15, pair.v17):
            await start(client, credits=50_000)
            for account in ACCOUNTS:
                holds = f"{_acct(account)}:holds"
                await client.zadd(holds, {LEASES["Ltwo"][0]: 1})
                await client.zadd(holds, {f"hold{n}|1": 2 for n in range(20)})
        await pair.settle(batch(range(0, 12)), summed=False)
        left = await pair.v17.zcard(f"{_acct(ACCOUNTS[0])}:holds")
        assert left == 1 + 1 + 1 + 20 - 16  # Lone's, Ltwo's and "hexp" (expired), 20 more
    finally:
        await pair.close()


def test_a_call_with_an_id_twice_sends_no_sums() -> None:
    """The sums need each entry once: a call with an id twice is v15's (its marker applies the
    first only), and its sums' argument is empty."""
    entries = batch(range(0, 5))[::2]
    assert _settle_command(entries)[-1] != b""
    assert _settle_command([*entries, entries[0]])[-1] == b""
    assert msgspec.msgpack.decode(_settle_command(entries)[-1])[2] == sum(
        e.cost_micros for e in entries
    )
