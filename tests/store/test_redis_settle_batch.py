"""The Redis store settles a batch with one `klawd_settle_v15` per account (`klawd_settle_v14`
with the call's ledger records sent as one argument of their lines and stored as it came; v14 is
`klawd_settle_v13` with the call's ledger records in one stream entry; v13 is `klawd_settle_v12`
with the names its entries share, their model, API key and hold, sent once a call; v12 is
`klawd_settle_v11`, which lets go of the markers of the entries a failing call had not reached;
v11 is `klawd_settle_v10` with each ledger record an argument of its own and a call's markers
written together; v10 is `klawd_settle_v9` with its entries' markers in a set per second of entry
time; v9 is `klawd_settle_v7` with its entries in one MessagePack argument; v7 is
`klawd_settle_v6` with the keys its entries share named once; for entries without a hold, what
`klawd_settle_v5` does), summing the entries' counters inside Redis: the keys it leaves must
hold exactly what `klawd_settle_v4`, one call per entry, and the batches of earlier releases
(`klawd_settle_v6`, `klawd_settle_v8`, `klawd_settle_v9`, `klawd_settle_v10`, `klawd_settle_v11`,
`klawd_settle_v12`, `klawd_settle_v13`, `klawd_settle_v14`) leave (replicas of these releases
share one Redis), the ledger's records compared in order whatever stream entries hold them, and a
batch costs one call per account."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgspec
import orjson
import pytest
import redis.asyncio as aioredis
import redis.exceptions

from gateway.settings import load_settings
from gateway.state import build_state
from gateway.store.base import Account, StoreError, UsageEntry
from gateway.store.redis import SETTLE_CHUNK, RedisStore, _settle_command
from gateway.store.redis_limiter import _acct, _spend_keys
from gateway.store.resp import RespClient, RespReplyError
from tests.redis_server import RedisServer

DAYS = ("2026-11-30", "2026-12-01")


def entries(account_id: str) -> list[UsageEntry]:
    """Two days (and so two months), two models, two keys (one without a budget), entries that
    cost more than they reserved (the balance stops at zero, then grows again), a key
    reservation released past zero, an image entry, and one entry repeated (a replay)."""
    out = []
    for n in range(40):
        cost = [0, 7, 900, 35][n % 4]
        reserved = [50, 10, 100, 0][n % 3]
        out.append(
            UsageEntry(
                id=f"use_{account_id}_{n}",
                ts=1_795_000_000.0 + n,
                day=DAYS[n // 25],
                account_id=account_id,
                key_id=["key_a", "key_b", ""][n % 3],
                model=["m/x", "m/y", ""][n % 5 % 3],
                provider="m",
                prompt_tokens=10 * n,
                completion_tokens=n,
                images=n % 2,
                cost_micros=cost,
                reserved_micros=reserved,
                latency_ms=5,
                status=200,
                request_id=f"req_{n}",
                stream=bool(n % 2),
                key_reserved_micros=reserved if n % 3 == 0 else 3 * reserved,
            )
        )
    return [*out[:30], out[12], *out[30:]]


def v4_call(entry: UsageEntry) -> tuple[object, ...]:
    """The per-entry call the previous release sends (gateway/store/lua/klawd.lua)."""
    key = _acct(entry.account_id)
    return (
        "FCALL", "klawd_settle_v4", 9, f"{key}:credits", f"{key}:usage:{entry.day}",
        f"{key}:ledger", f"{key}:settled:{entry.id}", f"{key}:kusage:{entry.day}",
        *_spend_keys(entry.account_id, entry.key_id or "-", entry.day), key,
        entry.reserved_micros - entry.cost_micros, entry.model or "-", entry.prompt_tokens,
        entry.completion_tokens, entry.images, entry.cost_micros, msgspec.json.encode(entry),
        entry.key_id or "-", entry.key_reserved_micros,
    )  # fmt: skip


def v6_call(batch: list[UsageEntry]) -> tuple[object, ...]:
    """The previous release's call for a batch of one account's entries: six keys each."""
    key = _acct(batch[0].account_id)
    keys = [f"{key}:credits", f"{key}:ledger", key, f"{key}:holds"]
    args: list[object] = []
    for entry in batch:
        key_id = entry.key_id or "-"
        keys += (
            f"{key}:usage:{entry.day}", f"{key}:settled:{entry.id}", f"{key}:kusage:{entry.day}",
            *_spend_keys(entry.account_id, key_id, entry.day),
        )  # fmt: skip
        args += (
            entry.reserved_micros - entry.cost_micros, entry.model or "-", entry.prompt_tokens,
            entry.completion_tokens, entry.images, entry.cost_micros, msgspec.json.encode(entry),
            key_id, entry.key_reserved_micros, entry.hold_id,
        )  # fmt: skip
    return ("FCALL", "klawd_settle_v6", len(keys), *keys, *args)


def v8_call(batch: list[UsageEntry]) -> tuple[object, ...]:
    """The previous release's call (`klawd_settle_v8`): each day and key's shared keys named
    once, then every entry's marker as a key and its eleven arguments."""
    key = _acct(batch[0].account_id)
    groups: dict[tuple[str, str], int] = {}
    shared: list[str] = []
    markers: list[str] = []
    args: list[object] = [0]
    for entry in batch:
        key_id = entry.key_id or "-"
        group = groups.get((entry.day, key_id))
        if group is None:
            group = groups[entry.day, key_id] = len(groups) + 1
            shared += (
                f"{key}:usage:{entry.day}", f"{key}:kusage:{entry.day}",
                *_spend_keys(entry.account_id, key_id, entry.day),
            )  # fmt: skip
        markers.append(f"{key}:settled:{entry.id}")
        args += (
            entry.reserved_micros - entry.cost_micros, entry.model or "-", entry.prompt_tokens,
            entry.completion_tokens, entry.images, entry.cost_micros, msgspec.json.encode(entry),
            key_id, entry.key_reserved_micros, entry.hold_id, group,
        )  # fmt: skip
    args[0] = len(groups)
    keys = [f"{key}:credits", f"{key}:ledger", key, f"{key}:holds", *shared, *markers]
    return ("FCALL", "klawd_settle_v8", len(keys), *keys, *args)


def v9_call(batch: list[UsageEntry]) -> tuple[object, ...]:
    """The previous release's call (`klawd_settle_v9`): v8's, its eleven arguments and its
    marker's name an entry in one MessagePack argument."""
    return _packed_call(batch, "klawd_settle_v9", lambda key, e: (f"{key}:settled:{e.id}",))


def v10_call(batch: list[UsageEntry]) -> tuple[object, ...]:
    """The previous release's call (`klawd_settle_v10`): v9's but the marker's name, then the
    entry's id and second, the ledger record inside the MessagePack argument."""
    return _packed_call(batch, "klawd_settle_v10", lambda key, e: (e.id, int(e.ts)))


def v12_call(batch: list[UsageEntry], function: str = "klawd_settle_v12") -> tuple[object, ...]:
    """The previous release's call (`klawd_settle_v12`; v11's arguments are the same): v10's
    with the ledger record's slot 0 and each record an argument of its own after it."""
    call = _packed_call(batch, function, lambda key, e: (e.id, int(e.ts)), records=False)
    return (*call, *(msgspec.json.encode(e) for e in batch))


def v14_call(batch: list[UsageEntry], function: str = "klawd_settle_v14") -> tuple[object, ...]:
    """The previous release's call (`klawd_settle_v14`; v13's arguments are the same): the store's
    MessagePack argument, then each record an argument of its own (v15: their lines in one)."""
    call = _settle_command(batch, "klawd_settle_v15")
    return (call[0], function, *call[2:-1], *(msgspec.json.encode(e) for e in batch))


def v13_call(batch: list[UsageEntry]) -> tuple[object, ...]:
    """The release before's call (`klawd_settle_v13`): v14's arguments, each record written by
    an `XADD` of its own."""
    return v14_call(batch, "klawd_settle_v13")


def _packed_call(
    batch: list[UsageEntry],
    function: str,
    marker: Callable[[str, UsageEntry], tuple[object, ...]],
    records: bool = True,
) -> tuple[object, ...]:
    """v9's and v10's call: an entry's eleven values, then `marker`'s (the account's key, the
    entry), all in one MessagePack argument (`records` False: the ledger record's slot 0, as
    v11's and v12's)."""
    key = _acct(batch[0].account_id)
    groups: dict[tuple[str, str], int] = {}
    shared: list[str] = []
    values: list[object] = []
    for entry in batch:
        key_id = entry.key_id or "-"
        group = groups.get((entry.day, key_id))
        if group is None:
            group = groups[entry.day, key_id] = len(groups) + 1
            shared += (
                f"{key}:usage:{entry.day}", f"{key}:kusage:{entry.day}",
                *_spend_keys(entry.account_id, key_id, entry.day),
            )  # fmt: skip
        values += (
            entry.reserved_micros - entry.cost_micros, entry.model or "-", entry.prompt_tokens,
            entry.completion_tokens, entry.images, entry.cost_micros,
            msgspec.json.encode(entry).decode() if records else 0, key_id,
            entry.key_reserved_micros, entry.hold_id, group, *marker(key, entry),
        )  # fmt: skip
    keys = [f"{key}:credits", f"{key}:ledger", key, f"{key}:holds", *shared]
    return ("FCALL", function, len(keys), *keys, msgspec.msgpack.encode(values))


async def snapshot(client: aioredis.Redis, account_id: str) -> dict[str, object]:
    """Every key of the account but the markers, by its name without the account id; the
    ledger as its entries in order; hashes whole; expiries rounded to days; the account's
    credit grant."""
    prefix = _acct(account_id)
    out: dict[str, object] = {
        "grant": await client.hmget(prefix, "grant_seq", "grant", "grant_spent")
    }
    async for raw in client.scan_iter(match=f"{prefix}:*", count=1000):
        name = raw.decode()
        short = name.removeprefix(prefix)
        if ":settled:" in short:
            continue
        kind = (await client.type(name)).decode()
        if kind == "hash":
            value: object = await client.hgetall(name)
        elif kind == "stream":
            value = [r.replace(account_id.encode(), b"A") for r in await ledger(client, account_id)]
        else:
            value = await client.get(name)
        ttl = await client.pttl(name)
        out[short] = (kind, value, -1 if ttl < 0 else round(ttl / 86_400_000))
    return out


async def ledger(client: aioredis.Redis, account_id: str) -> list[bytes]:
    """The account's ledger records in order: each line of each stream entry's fields' values
    (one `entry` a request before `klawd_settle_v14`, a call's `e1`, `e2`, … in v14, a call's
    `records`, a record a line, since v15)."""
    stream = await client.xrange(f"{_acct(account_id)}:ledger")
    return [r for _, fields in stream for value in fields.values() for r in value.splitlines()]


@pytest.fixture
async def redis_store(redis_server: RedisServer) -> RedisStore:
    redis_server.flush()
    return RedisStore(redis_server.url)


async def two_accounts(
    store: RedisStore, client: aioredis.Redis, first: str, second: str
) -> tuple[Account, Account]:
    """Two new accounts, each with reservations in flight (40) on every spend hash of `entries`'
    keys and days."""
    accounts = (
        await store.create_account(first, "free", 1_000),
        await store.create_account(second, "free", 1_000),
    )
    for account in accounts:
        for key_id in ("key_a", "key_b", "-"):
            for day in DAYS:
                for spend in _spend_keys(account.id, key_id, day):
                    await client.hset(spend, "r", 40)
    return accounts


async def assert_left_alike(client: aioredis.Redis, first: Account, second: Account) -> None:
    """The same keys, values and expiries (markers aside) and the same balance."""
    assert await snapshot(client, first.id) == await snapshot(client, second.id)
    credits = [await client.get(f"{_acct(a.id)}:credits") for a in (first, second)]
    assert credits[0] == credits[1]


async def test_a_batch_leaves_the_keys_the_per_entry_settlement_leaves(
    redis_store: RedisStore, redis_server: RedisServer
) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        batched, single = await two_accounts(redis_store, client, "batched", "single")
        await redis_store.settle(entries(batched.id))
        await redis_store.settle(entries(batched.id)[:20])  # a replayed batch: nothing twice
        await redis_store._ensure_library()
        for entry in [*entries(single.id), *entries(single.id)[:20]]:
            await client.execute_command(*v4_call(entry))
        assert await snapshot(client, batched.id) == await snapshot(client, single.id)
        after = await redis_store.get_account(batched.id)
        assert after is not None
        assert after.credits_micros == (await redis_store.get_account(single.id)).credits_micros  # type: ignore[union-attr]
    finally:
        await client.aclose()
        await redis_store.close()


async def test_a_batch_leaves_the_keys_the_previous_release_batch_leaves(
    redis_store: RedisStore, redis_server: RedisServer
) -> None:
    """Six groups of shared keys (two days, three keys) named once by the store's call, six keys
    an entry in the previous release's: the same keys, values and expiries after each, a
    replayed batch included."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        batched, previous = await two_accounts(redis_store, client, "batched", "previous")
        await redis_store.settle(entries(batched.id))
        await redis_store.settle(entries(batched.id)[:20])
        for batch in (entries(previous.id), entries(previous.id)[:20]):
            await client.execute_command(*v6_call(batch))
        await assert_left_alike(client, batched, previous)
    finally:
        await client.aclose()
        await redis_store.close()


async def test_v9_leaves_what_the_release_before_v8_leaves_and_each_sees_the_others(
    redis_store: RedisStore, redis_server: RedisServer
) -> None:
    """`klawd_settle_v9` (its entries in one MessagePack argument) against `klawd_settle_v8`
    (eleven arguments and a marker key an entry): the same keys, values and expiries; and a
    batch settled by one is not settled again by the other (replicas of both releases, a batch
    retried across them)."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        batched, previous = await two_accounts(redis_store, client, "batched", "previous")
        await redis_store._ensure_library()
        await client.execute_command(*v9_call(entries(batched.id)[:25]))
        await client.execute_command(*v8_call(entries(batched.id)[10:]))  # 15 settled already
        await client.execute_command(*v8_call(entries(previous.id)[:25]))
        await client.execute_command(*v9_call(entries(previous.id)[10:]))  # ... by v8
        await assert_left_alike(client, batched, previous)
        assert len(await ledger(client, batched.id)) == len({e.id for e in entries(batched.id)})
    finally:
        await client.aclose()
        await redis_store.close()


async def test_the_store_call_leaves_what_v10_leaves_and_each_sees_the_others(
    redis_store: RedisStore, redis_server: RedisServer
) -> None:
    """The store's call (`klawd_settle_v12`, v11's: each ledger record an argument of its own, the
    markers written once per second of entry time) against the previous release's
    (`klawd_settle_v10`): the same keys, values and expiries, markers included; and a batch
    settled by one is not settled again by the other (replicas of both releases on one
    Redis)."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        batched, previous = await two_accounts(redis_store, client, "batched", "previous")
        await redis_store._ensure_library()
        await redis_store.settle(entries(batched.id)[:25])
        await client.execute_command(*v10_call(entries(batched.id)[10:]))  # 15 settled already
        await client.execute_command(*v10_call(entries(previous.id)[:25]))
        await redis_store.settle(entries(previous.id)[10:])  # ... by v10
        await assert_left_alike(client, batched, previous)
        assert len(await ledger(client, batched.id)) == len({e.id for e in entries(batched.id)})
        for account in (batched, previous):
            prefix = f"{_acct(account.id)}:settled:"
            sets = {raw async for raw in client.scan_iter(match=f"{prefix}w*")}
            marked = {m for name in sets for m in await client.smembers(name)}
            assert marked == {e.id.encode() for e in entries(account.id)}
            for name in sets:
                assert 590_000 < await client.pttl(name) <= 600_000
    finally:
        await client.aclose()
        await redis_store.close()


@pytest.mark.parametrize("previous_call", [v12_call, v13_call, v14_call], ids=["v12", "v13", "v14"])
async def test_the_store_call_leaves_what_v12_to_v14_leave_and_each_sees_the_others(
    redis_store: RedisStore,
    redis_server: RedisServer,
    previous_call: Callable[[list[UsageEntry]], tuple[object, ...]],
) -> None:
    """The store's call (`klawd_settle_v15`: v14's, the call's records one argument of their
    lines, stored as it came) against earlier releases' (`klawd_settle_v14`: a record an argument
    and a field of the call's stream entry; `klawd_settle_v13`: the call's models, API keys and
    holds named once, an `XADD` a record; `klawd_settle_v12`, every name with every entry): the
    same keys,
    values and expiries, markers included, the same ledger records in order, over entries of
    several models, keys, days and holds (a lease's, an exact admission's, none); and a batch
    settled by one is not settled again by the other (replicas of these releases on one
    Redis)."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        batched, previous = await two_accounts(redis_store, client, "batched", "previous")
        await redis_store._ensure_library()
        held = {}
        for account in (batched, previous):
            prefix = _acct(account.id)
            # a lease holding 100 (its hold member "<id>|0") and two exact admissions' holds
            await client.hset(f"{prefix}:leases", "Lone", 100)
            await client.zadd(f"{prefix}:holds", {"Lone|0": 9e12, "h1": 9e12, "h2": 9e12})
            holds = ["Lone", "h1", "", "Lone", "h2"]
            held[account.id] = [
                msgspec.structs.replace(e, hold_id=holds[n % 5])
                for n, e in enumerate(entries(account.id))
            ]
        await redis_store.settle(held[batched.id][:25])
        await client.execute_command(*previous_call(held[batched.id][10:]))  # 15 settled already
        await client.execute_command(*previous_call(held[previous.id][:25]))
        await redis_store.settle(held[previous.id][10:])  # ... by the previous release
        await assert_left_alike(client, batched, previous)
        for account in (batched, previous):
            prefix = _acct(account.id)
            assert await client.zrange(f"{prefix}:holds", 0, -1) == []
            assert await client.hgetall(f"{prefix}:leases") == {}
            assert len(await ledger(client, account.id)) == len({e.id for e in entries(account.id)})
            sets = {raw async for raw in client.scan_iter(match=f"{prefix}:settled:w*")}
            marked = {m for name in sets for m in await client.smembers(name)}
            assert marked == {e.id.encode() for e in entries(account.id)}
    finally:
        await client.aclose()
        await redis_store.close()


async def test_a_batch_settled_by_the_previous_release_v9_is_not_settled_again(
    redis_store: RedisStore, redis_server: RedisServer
) -> None:
    """Entries settled by `klawd_settle_v9` (a marker key each) within ten minutes are
    recognised by the store's call (`klawd_settle_v12`, markers in sets): a batch retried, or
    replayed, after an upgrade is settled once; the keys are those v9 alone leaves."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        upgraded, previous = await two_accounts(redis_store, client, "upgraded", "previous")
        await redis_store._ensure_library()
        await client.execute_command(*v9_call(entries(upgraded.id)[:25]))
        await redis_store.settle(entries(upgraded.id)[10:])  # 15 settled already, by v9
        await client.execute_command(*v9_call(entries(previous.id)[:25]))
        await client.execute_command(*v9_call(entries(previous.id)[10:]))
        await assert_left_alike(client, upgraded, previous)
        assert len(await ledger(client, upgraded.id)) == len({e.id for e in entries(upgraded.id)})
    finally:
        await client.aclose()
        await redis_store.close()


async def test_settled_entries_are_marked_in_a_set_per_second_kept_ten_minutes(
    redis_store: RedisStore, redis_server: RedisServer
) -> None:
    """No key per settled entry: each entry's id goes into the account's set of the second of
    its time, which expires ten minutes after its last id was added; a batch replayed later is
    recognised by those sets."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        account = await redis_store.create_account("marked", "free", 1_000)
        batch = entries(account.id)
        await redis_store.settle(batch)
        prefix = f"{_acct(account.id)}:settled:"
        names = sorted([raw.decode() async for raw in client.scan_iter(match=f"{prefix}*")])
        seconds = sorted({int(e.ts) for e in batch})
        assert names == sorted(f"{prefix}w{second}" for second in seconds)
        for second in seconds:
            ids = {e.id.encode() for e in batch if int(e.ts) == second}
            assert await client.smembers(f"{prefix}w{second}") == ids
            assert 590_000 < await client.pttl(f"{prefix}w{second}") <= 600_000
        credits = await client.get(f"{_acct(account.id)}:credits")
        await client.pexpire(f"{prefix}w{seconds[0]}", 300_000)
        await redis_store.settle(batch)  # replayed: nothing settled, no marker's life renewed
        assert await client.get(f"{_acct(account.id)}:credits") == credits
        assert len(await ledger(client, account.id)) == len({e.id for e in batch})
        assert await client.pttl(f"{prefix}w{seconds[0]}") <= 300_000
        late = msgspec.structs.replace(batch[0], id=f"{batch[0].id}_late")
        await redis_store.settle([late])  # a new id of that second: kept ten minutes again
        assert 590_000 < await client.pttl(f"{prefix}w{seconds[0]}") <= 600_000
        assert late.id.encode() in await client.smembers(f"{prefix}w{seconds[0]}")
    finally:
        await client.aclose()
        await redis_store.close()


async def test_a_call_that_fails_after_its_entries_leaves_them_marked_for_the_retry(
    redis_store: RedisStore, redis_server: RedisServer
) -> None:
    """Redis does not roll back a function that fails midway: a call whose usage sums fail
    (here: the day's usage key is not a hash) after its entries went into the ledger leaves
    those entries marked, as v9's `SET NX` before each entry did, so the recorder's retry does
    not add them to the ledger again (marked only at the call's end, every entry was applied
    twice)."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        account = await redis_store.create_account("halfway", "free", 1_000)
        batch = entries(account.id)[:10]  # one day, ten ids
        usage = f"{_acct(account.id)}:usage:{DAYS[0]}"
        await client.set(usage, "not a hash")
        with pytest.raises(StoreError, match="redis settle failed"):
            await redis_store.settle(batch)
        assert len(await ledger(client, account.id)) == len(batch)  # applied before the failure
        await client.delete(usage)
        await redis_store.settle(batch)  # the retry
        assert len(await ledger(client, account.id)) == len(batch)
    finally:
        await client.aclose()
        await redis_store.close()


async def test_a_batch_costs_one_call_per_account_and_chunk(
    redis_store: RedisStore, redis_server: RedisServer
) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        first = await redis_store.create_account("one", "free", 10**9)
        second = await redis_store.create_account("two", "free", 10**9)
        batch = [
            e for pair in zip(entries(first.id), entries(second.id), strict=True) for e in pair
        ]
        batch += [
            msgspec.structs.replace(e, id=f"{e.id}_more{n}")
            for n in range(3)
            for e in entries(first.id)
        ]
        await redis_store._ensure_library()
        await client.config_resetstat()
        await redis_store.settle(batch)
        first_entries = len({e.id for e in batch if e.account_id == first.id})
        calls = (await client.info("commandstats"))["cmdstat_fcall"]["calls"]
        assert first_entries > SETTLE_CHUNK
        assert calls == -(-first_entries // SETTLE_CHUNK) + 1
        usage = await redis_store.usage(first.id, DAYS[0], DAYS[1])
        assert sum(row.requests for row in usage) == first_entries
    finally:
        await client.aclose()
        await redis_store.close()


async def test_the_app_settles_the_redis_ledger_in_50_ms_batches(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The usage recorder gathers entries for the Redis store's interval, as long as the
    embedded store's: a settle call's fixed part spread over more entries (issue 19zv)."""
    redis_server.flush()
    config = tmp_path / "klawd.toml"
    config.write_text(f'[store]\nurl = "{redis_server.url}"\n')
    state = await build_state(load_settings(config, {}), {}, None)
    try:
        assert state.recorder._flush_interval_s == RedisStore.settle_interval_s == 0.05
    finally:
        await state.close()


@pytest.mark.parametrize("version", ["v11", "v12", "v13", "v14", "v15", "v17"])
async def test_a_call_that_fails_on_an_entry_keeps_what_decision_0010_says(
    redis_store: RedisStore, redis_server: RedisServer, version: str
) -> None:
    """What a call failing midway keeps and loses (decision 0010, seventeenth and eighteenth
    passes): here its fifth entry of ten fails (its lease's hash is not a hash). Every entry is
    marked before the first one's effects. The four entries before the failing one are in the
    ledger, but their sums, balance and spends (written after the loop) are not; the failing
    entry is marked, not applied. v11 (the previous release's call) leaves the five after it
    marked and not applied: the recorder's retry, once the key is mended, applies none of them
    (lost). v12, v13, v14 (the previous releases') and v15 (the call's records in one stream
    entry, here written as it fails, the lines of the four picked from the call's) unmark them
    as they fail: the retry applies those five, and nothing twice. v17 (the store's: v15's
    sums at once when it can) reads the lease's hash before writing anything, finds it not a
    hash and takes v15's path: the same."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        account = await redis_store.create_account("midway", "free", 1_000)
        batch = entries(account.id)[:10]  # one day, ten ids, no hold
        failing = 4
        batch[failing] = msgspec.structs.replace(batch[failing], hold_id="Lmidway|0")
        later = batch[failing + 1 :] if version != "v11" else []
        leases = f"{_acct(account.id)}:leases"
        await client.set(leases, "not a hash")
        credits = await client.get(f"{_acct(account.id)}:credits")
        await redis_store._ensure_library()
        call = _settle_command(batch, f"klawd_settle_{version}")
        assert _settle_command(batch)[1] == "klawd_settle_v17"  # the store's
        if version in ("v13", "v14"):
            call = v14_call(batch, f"klawd_settle_{version}")
        elif version in ("v11", "v12"):
            call = v12_call(batch, f"klawd_settle_{version}")
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            await client.execute_command(*call)

        async def recorded() -> list[bytes]:
            return [orjson.loads(r)["id"].encode() for r in await ledger(client, account.id)]

        assert await recorded() == [e.id.encode() for e in batch[:failing]]
        prefix = f"{_acct(account.id)}:settled:"
        marked: set[bytes] = set()
        async for name in client.scan_iter(match=f"{prefix}*"):
            marked |= await client.smembers(name)
        assert marked == {e.id.encode() for e in batch if e not in later}
        assert await client.get(f"{_acct(account.id)}:credits") == credits
        assert await redis_store.usage(account.id, DAYS[0], DAYS[0]) == []
        await client.delete(leases)
        await redis_store.settle(batch)  # the retry (the store's call)
        assert await recorded() == [e.id.encode() for e in [*batch[:failing], *later]]
        usage = await redis_store.usage(account.id, DAYS[0], DAYS[0])
        assert sum(row.requests for row in usage) == len(later)
        spent = sum(e.cost_micros - e.reserved_micros for e in later)
        assert int(await client.get(f"{_acct(account.id)}:credits")) == max(0, int(credits) - spent)
    finally:
        await client.aclose()
        await redis_store.close()


@pytest.mark.parametrize("broken", ["a key of the wrong type", "a balance not a number"])
async def test_a_failing_v12_or_v13_call_replies_the_error_v11_replies(
    redis_store: RedisStore, redis_server: RedisServer, broken: str
) -> None:
    """v12 catches a failing call's error (to unmark the entries it had not reached) and raises
    it again: its reply is v11's, Redis's own error with its code (WRONGTYPE) or a Lua runtime
    error's text as it was raised, not a second `user_function:LINE:` before it (decision 0010,
    nineteenth pass); v13's (v12's with its names sent once) too. Only the line named after
    `script:` differs (where v12 raised it again)."""
    client = aioredis.Redis.from_url(redis_server.url)
    resp = RespClient("127.0.0.1", redis_server.port)
    try:
        await redis_store._ensure_library()
        replies = {}
        for version in ("v11", "v12", "v13", "v14", "v15", "v17"):
            account = await redis_store.create_account(f"broken {version}", "free", 1_000)
            batch = entries(account.id)[:3]
            if broken == "a key of the wrong type":
                batch[1] = msgspec.structs.replace(batch[1], hold_id="Lbroken|0")
                await client.set(f"{_acct(account.id)}:leases", "not a hash")
            else:
                await client.set(f"{_acct(account.id)}:credits", "not a number")
            function = f"klawd_settle_{version}"
            call = {
                "v13": v13_call(batch), "v14": v14_call(batch),
                "v15": _settle_command(batch, function), "v17": _settle_command(batch),
            }.get(version)  # fmt: skip
            call = call or v12_call(batch, function)
            assert call[1] == function
            with pytest.raises(RespReplyError) as failed:
                await resp.execute(*call)
            reply, _, where = str(failed.value).partition(" script: ")
            assert where.startswith(f"klawd_settle_{version}, on @user_function:")
            replies[version] = reply
        assert replies["v12"] == replies["v11"]
        assert replies["v13"] == replies["v11"]
        assert replies["v14"] == replies["v11"]
        assert replies["v15"] == replies["v11"]
        assert replies["v17"] == replies["v11"]
        code = "WRONGTYPE" if broken == "a key of the wrong type" else "ERR"
        assert replies["v11"].split()[0] == code
    finally:
        await resp.close()
        await client.aclose()
        await redis_store.close()


async def test_a_v14_call_writes_its_ledger_records_in_one_stream_entry(
    redis_store: RedisStore, redis_server: RedisServer
) -> None:
    """`klawd_settle_v14` (the previous release's) writes a call's records by one `XADD` (one
    `XADD` a record was the biggest part of an entry's work in Redis: decision 0010,
    twenty-fifth pass): one stream entry whose fields `e1`, `e2`, … hold the records of the
    entries settled for the first time, in order, and no `entry` field, so that a reader of an
    earlier release fails on it rather than count one record of it. A replay writes none."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        account = await redis_store.create_account("folded", "free", 1_000)
        batch = entries(account.id)  # 41 entries, one of them twice
        await redis_store._ensure_library()
        await client.execute_command(*v14_call(batch))
        await client.execute_command(*v14_call(batch[:20]))  # a replay
        [(_, fields)] = await client.xrange(f"{_acct(account.id)}:ledger")
        unique = list({e.id: e for e in batch}.values())
        assert list(fields) == [f"e{n}".encode() for n in range(1, len(unique) + 1)]
        assert list(fields.values()) == [msgspec.json.encode(e) for e in unique]
    finally:
        await client.aclose()
        await redis_store.close()


async def test_a_call_stores_its_records_lines_as_they_came_in_one_field(
    redis_store: RedisStore, redis_server: RedisServer
) -> None:
    """`klawd_settle_v15` (and v17, the store's) takes a call's records as one argument, their
    JSON lines, and stores it as it came in the one field `records` of the call's stream entry
    (a record an argument was a Lua string and a field each: decision 0010, twenty-sixth pass);
    when some of
    the call's entries were settled before (here one entry twice, then a batch with new and old
    entries), only the new entries' lines, in order. A replay writes nothing. A field of two
    records or more is no JSON document, so a reader of an earlier release (one record a field)
    fails on it rather than count one record of it."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        account = await redis_store.create_account("lines", "free", 1_000)
        batch = entries(account.id)  # 41 entries, one of them twice
        whole, rest = batch[:20], batch[20:]
        await redis_store.settle(whole)
        await redis_store.settle(batch[10:])  # ten settled before
        await redis_store.settle(batch[:20])  # a replay
        stream = await client.xrange(f"{_acct(account.id)}:ledger")
        assert [list(fields) for _, fields in stream] == [[b"records"], [b"records"]]
        lines = [fields[b"records"] for _, fields in stream]
        assert lines[0] == _settle_command(whole, "klawd_settle_v15")[-1]
        new = [e for e in rest if e not in whole]  # (one of the rest is one of the first 20)
        assert lines[1] == b"".join(msgspec.json.encode(e) + b"\n" for e in new)
        assert len(new) == len(rest) - 1
        with pytest.raises(msgspec.DecodeError, match="trailing characters"):
            msgspec.json.decode(lines[1])
    finally:
        await client.aclose()
        await redis_store.close()


async def test_a_ledger_of_the_wrong_type_fails_the_call_before_anything_is_written(
    redis_store: RedisStore, redis_server: RedisServer
) -> None:
    """v14 writes the ledger after the entries' loop, so it checks the ledger's type first: a
    ledger key that is not a stream fails the call with nothing marked, no hold taken and no
    balance moved, and the recorder's retry, once the key is mended, applies every entry (v13's
    first `XADD` failed after its entry's hold was taken)."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        account = await redis_store.create_account("broken ledger", "free", 1_000)
        prefix = _acct(account.id)
        await client.zadd(f"{prefix}:holds", {"h1": 9e12})
        batch = entries(account.id)[:10]
        batch[0] = msgspec.structs.replace(batch[0], hold_id="h1")
        await client.set(f"{prefix}:ledger", "not a stream")
        credits = await client.get(f"{prefix}:credits")
        with pytest.raises(StoreError, match="redis settle failed"):
            await redis_store.settle(batch)
        assert [raw async for raw in client.scan_iter(match=f"{prefix}:settled:*")] == []
        assert await client.zrange(f"{prefix}:holds", 0, -1) == [b"h1"]
        assert await client.get(f"{prefix}:credits") == credits
        await client.delete(f"{prefix}:ledger")
        await redis_store.settle(batch)  # the retry
        assert await ledger(client, account.id) == [msgspec.json.encode(e) for e in batch]
        assert await client.zrange(f"{prefix}:holds", 0, -1) == []
    finally:
        await client.aclose()
        await redis_store.close()


async def test_usage_events_read_the_ledger_written_before_and_since_v14_and_v15(
    redis_store: RedisStore, redis_server: RedisServer
) -> None:
    """The usage events' reader (`usage_since`) counts every record of a ledger that holds every
    shape, as a store upgraded during rolling deploys does: a record a stream entry (field
    `entry`, `klawd_settle_v13` and earlier), a call's records in one, a field each (v14), and a
    call's records in one field, a line each (v15)."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        account = await redis_store.create_account("both shapes", "free", 1_000)
        batch = entries(account.id)[:12]
        start = await redis_store.usage_cursor(account.id)
        await redis_store._ensure_library()
        await client.execute_command(*v13_call(batch[:4]))  # the releases before's
        await client.execute_command(*v14_call(batch[4:8]))
        await redis_store.settle(batch[8:])
        rows, cursor = await redis_store.usage_since(account.id, start)
        assert len(await client.xrange(f"{_acct(account.id)}:ledger")) == 6
        by_model = {row.model: row for row in rows}
        for model in {e.model for e in batch}:
            mine = [e for e in batch if e.model == model]
            row = by_model[model]
            assert (row.requests, row.prompt_tokens, row.completion_tokens, row.images,
                    row.cost_micros) == (len(mine), sum(e.prompt_tokens for e in mine),
                    sum(e.completion_tokens for e in mine), sum(e.images for e in mine),
                    sum(e.cost_micros for e in mine))  # fmt: skip
        assert cursor == await redis_store.usage_cursor(account.id)
        assert await redis_store.usage_since(account.id, cursor) == ([], cursor)
    finally:
        await client.aclose()
        await redis_store.close()


async def test_a_v14_call_of_more_entries_than_a_chunk_names_every_record(
    redis_store: RedisStore, redis_server: RedisServer
) -> None:
    """v14's field names are built at the library's load up to SETTLE_CHUNK; a call of more
    entries (another client's) names the rest in the call: `e1` … `e130`, every record kept."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        account = await redis_store.create_account("long call", "free", 10**9)
        base = entries(account.id)[0]
        batch = [msgspec.structs.replace(base, id=f"{base.id}_{n}") for n in range(130)]
        await redis_store._ensure_library()
        await client.execute_command(*v14_call(batch))
        [(_, fields)] = await client.xrange(f"{_acct(account.id)}:ledger")
        assert list(fields) == [f"e{n}".encode() for n in range(1, 131)]
        assert list(fields.values()) == [msgspec.json.encode(e) for e in batch]
    finally:
        await client.aclose()
        await redis_store.close()
