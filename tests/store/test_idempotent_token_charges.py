"""Token charges that can be sent again (`klawd_charge_tokens_v4`: every charge's id remembered
beside the account's bucket; gateway/token_charges.py), against real redis-servers: a charge whose
reply a relay on loopback swallowed is kept, sent again and counts once; one whose command it
swallowed counts once too; the same id twice counts once; previous releases' v2 and v3 charges
share the bucket; the ids' set, trimmed and given its expiry only when due, remembers every id
for the window and holds none much longer (a small window given through the function's
argument); on a Redis Cluster of the test's own, a charge failed by its slot's primary stopped
is kept and lands once that primary is back. And a worker's shutdown (`AppState.close`, what
`klawd serve`'s drain ends with) sends the charges it keeps: they land on a store back up; on a
store still silent the shutdown ends within its budget and counts what it lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from gateway import ids
from gateway.drain import shutdown_budget_s
from gateway.limits import LimitSpec
from gateway.metrics import Metrics
from gateway.settings import load_settings
from gateway.state import AppState, build_state
from gateway.store.redis import RedisStore
from gateway.store.redis_limiter import CHARGE_ID_MS
from gateway.token_charges import KEPT_LIFE_S, TokenCharges
from tests.live_bound import running_deadline
from tests.redis_relay import RedisRelay
from tests.redis_server import RedisClusterServers, RedisServer, cluster_ports

TPM = 6000  # 100 tokens a second of refill
SPEC = LimitSpec(requests_per_minute=100, requests_per_day=1000, tokens_per_minute=TPM)
CLUSTER_NODE = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")


@pytest.fixture
async def relay(redis_server: RedisServer) -> AsyncIterator[RedisRelay]:
    relay = RedisRelay(redis_server.port)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.close()


@pytest.fixture
async def store(relay: RedisRelay) -> AsyncIterator[RedisStore]:
    opened = RedisStore(relay.url)
    try:
        yield opened
    finally:
        await opened.close()


def tpm_key(account_id: str) -> str:
    return f"klawd:acct:{{{account_id}}}:tpm"


def ids_key(account_id: str) -> str:
    return f"klawd:acct:{{{account_id}}}:charge_ids"


def stored_level(client: redis.Redis | redis.RedisCluster, account_id: str) -> float:
    """The account's tokens/minute bucket's level as last stored (gateway/store/lua/klawd.lua)."""
    return float(client.hget(tpm_key(account_id), "level") or "nan")


def charges_of(store: RedisStore) -> tuple[TokenCharges, list[tuple[str, int]]]:
    dropped: list[tuple[str, int]] = []
    return TokenCharges(store.limiter(), lambda *lost: dropped.append(lost)), dropped


async def loaded(store: RedisStore) -> None:
    """The store's functions loaded (a first charge, of an account of its own)."""
    await store.limiter().charge_tokens(f"acct_{ids.token_hex(6)}", SPEC, 1)


async def test_a_charge_whose_reply_was_lost_is_sent_again_and_lands_once(
    store: RedisStore, relay: RedisRelay, redis_server: RedisServer
) -> None:
    """The charge ran; its reply never came (the command timeout): kept, and sent again once the
    store answers, the store taking nothing the second time. Before, it was dropped (counted
    `unknown`) and never sent again, since sending it again could count it twice."""
    charges, dropped = charges_of(store)
    account_id = f"acct_{ids.token_hex(6)}"
    await loaded(store)
    relay.swallow_replies = True
    await charges.charge(account_id, SPEC, 1000, "r1")
    relay.swallow_replies = False
    assert charges.owing == 1
    await charges.landed(account_id)
    assert (charges.kept, dropped) == (False, [])
    with redis.Redis(port=redis_server.port) as client:
        # stored by the charge as it first ran, untouched by the one sent again
        assert stored_level(client, account_id) == TPM - 1000
        assert client.zcard(ids_key(account_id)) == 1


async def test_a_charge_whose_command_was_lost_is_sent_again_and_lands_once(
    store: RedisStore, relay: RedisRelay, redis_server: RedisServer
) -> None:
    """The command never reached Redis, the client cannot tell (the command timeout, as for a
    lost reply): kept, sent again, taken once, from the bucket as it was at the charge. Before,
    dropped: the account's bucket never charged."""
    charges, dropped = charges_of(store)
    account_id = f"acct_{ids.token_hex(6)}"
    await loaded(store)
    began = time.monotonic()
    relay.swallow_requests = True
    await charges.charge(account_id, SPEC, 1000, "r1")
    relay.swallow_requests = False
    assert charges.owing == 1
    await charges.landed(account_id)
    refilled = (time.monotonic() - began) * TPM / 60
    assert (charges.kept, dropped) == (False, [])
    with redis.Redis(port=redis_server.port) as client:
        # 1000 taken from a full bucket, less its refill since the charge: once
        assert TPM - 1000 <= stored_level(client, account_id) <= TPM - 1000 + refilled


async def test_the_same_charge_id_twice_counts_once(
    store: RedisStore, redis_server: RedisServer
) -> None:
    """The store remembers every charge's id for CHARGE_ID_MS (5 minutes) in a sorted set beside
    the bucket, with an expiry: the same id again takes nothing; another id takes its tokens."""
    limiter = store.limiter()
    account_id = f"acct_{ids.token_hex(6)}"
    await limiter.charge_tokens(account_id, SPEC, 700, (("c1", 700),))
    await limiter.charge_tokens(account_id, SPEC, 700, (("c1", 700),))
    with redis.Redis(port=redis_server.port) as client:
        assert stored_level(client, account_id) == TPM - 700
        await limiter.charge_tokens(account_id, SPEC, 300, (("c2", 300),))
        assert stored_level(client, account_id) <= TPM - 1000 + 20  # (the refill meanwhile)
        assert client.zrange(ids_key(account_id), 0, -1) == [b"c2", b"c1"]  # the newest first
        # the window and a tenth, from the first charge's upkeep (the next is due 30 s later)
        assert 329_000 < client.pttl(ids_key(account_id)) <= 330_000
        assert CHARGE_ID_MS / 1000 > KEPT_LIFE_S + 60  # a kept charge's ids outlive its keep


async def test_a_previous_release_s_v2_charge_and_a_v4_one_share_the_bucket(
    store: RedisStore, redis_server: RedisServer
) -> None:
    """A rolling deploy: a worker of an older release charges with v2 (no id, never sent
    again), this release's with v4, on one account: both taken from the one bucket, once."""
    limiter = store.limiter()
    account_id = f"acct_{ids.token_hex(6)}"
    await limiter.charge_tokens(account_id, SPEC, 700, (("c1", 700),))
    with redis.Redis(port=redis_server.port) as client:
        client.fcall("klawd_charge_tokens_v2", 1, tpm_key(account_id), TPM, 300, 0)
        assert TPM - 1000 <= stored_level(client, account_id) <= TPM - 1000 + 20
        await limiter.charge_tokens(account_id, SPEC, 700, (("c1", 700),))  # seen: nothing
        assert TPM - 1000 <= stored_level(client, account_id) <= TPM - 1000 + 20


async def test_v3_and_v4_charges_interleaved_on_one_account_each_count_once(
    store: RedisStore, redis_server: RedisServer
) -> None:
    """A rolling deploy from the previous release: its workers charge with v3 (their ids in
    `:charges`), this release's with v4 (`:charge_ids`), turn about on one account, each sending
    some charges again (a lost reply) through its own function, as a kept charge is: every
    charge is taken once from the one bucket, and neither version's upkeep loses the other's
    ids."""
    limiter = store.limiter()
    account_id = f"acct_{ids.token_hex(6)}"
    v3_ids = f"klawd:acct:{{{account_id}}}:charges"
    with redis.Redis(port=redis_server.port) as client:

        def charge_v3(charge_id: str, tokens: int) -> int:
            keys = (tpm_key(account_id), v3_ids)
            return int(client.fcall("klawd_charge_tokens_v3", 2, *keys, TPM, tokens, 0,
                                    charge_id, tokens))  # fmt: skip

        taken = []
        for turn in range(3):
            taken.append(charge_v3(f"a{turn}", 100))
            await limiter.charge_tokens(account_id, SPEC, 200, ((f"b{turn}", 200),))
            taken.append(charge_v3(f"a{turn}", 100))  # sent again: nothing
            await limiter.charge_tokens(account_id, SPEC, 200, ((f"b{turn}", 200),))  # nothing
            await limiter.charge_tokens(  # a late charge of a kept one and one that ran
                account_id, SPEC, 250, ((f"c{turn}", 50), (f"b{turn}", 200))
            )
        assert taken == [100, 0] * 3
        # 3 x (100 + 200 + 50) once each, the refill meanwhile at 100 tokens a second
        assert TPM - 1050 <= stored_level(client, account_id) <= TPM - 1050 + 50
        assert client.zcard(v3_ids) == 3
        assert client.zcard(ids_key(account_id)) == 6


def charge_v4(client: redis.Redis, account_id: str, window_ms: int, *charges: str) -> int:
    """`klawd_charge_tokens_v4` with the window given: each charge 10 tokens, by its id."""
    keys = (tpm_key(account_id), ids_key(account_id))
    parts = [part for charge_id in charges for part in (charge_id, 10)]
    reply = client.fcall("klawd_charge_tokens_v4", 2, *keys, TPM, 10 * len(charges), 0,
                         window_ms, *parts)  # fmt: skip
    return int(reply)


def remembered_until(client: redis.Redis, account_id: str) -> tuple[float, dict[bytes, int]]:
    """The ids' set's expiry (Redis's milliseconds), and each id's first-seen time."""
    pipe = client.pipeline(transaction=True)
    pipe.time()
    pipe.pttl(ids_key(account_id))
    pipe.zrange(ids_key(account_id), 0, -1, withscores=True)
    (seconds, micros), pttl, members = pipe.execute()
    now_ms = seconds * 1000 + micros // 1000
    return now_ms + pttl, {member: -int(score) for member, score in members}


async def test_the_ids_set_s_trim_and_expiry_run_only_when_due(
    store: RedisStore, redis_server: RedisServer
) -> None:
    """The cost v4 cuts (v3 trimmed the set and set its expiry on every call): a charge within
    a tenth of the window after the last upkeep leaves the set's expiry as it is; a bucket
    without the upkeep's time (expired, or written by v3 only) runs the upkeep again."""
    await loaded(store)
    account_id = f"acct_{ids.token_hex(6)}"
    with redis.Redis(port=redis_server.port) as client:
        assert charge_v4(client, account_id, 60_000, "a") == 10
        expires, _ = remembered_until(client, account_id)
        await asyncio.sleep(0.2)
        assert charge_v4(client, account_id, 60_000, "b") == 10
        assert abs(remembered_until(client, account_id)[0] - expires) <= 2  # not set again
        client.hdel(tpm_key(account_id), "upkeep")
        assert charge_v4(client, account_id, 60_000, "c") == 10
        assert remembered_until(client, account_id)[0] >= expires + 200


async def test_every_id_is_remembered_for_the_window_and_gone_soon_after(
    store: RedisStore, redis_server: RedisServer
) -> None:
    """With a 1 s window (the function's argument; the gateway gives 5 minutes): a charge every
    30-60 ms for 1.5 s, each new, the one before and the oldest seen within 0.9 s sent again
    (taking nothing). After every call each id in the set is kept until its first sight plus the
    window at least, none seen over the window and its tenth before the call is left, and the
    set is gone once no charge came for the window and its tenth."""
    await loaded(store)
    account_id = f"acct_{ids.token_hex(6)}"
    window = 1000
    with redis.Redis(port=redis_server.port) as client:
        sent: list[str] = []
        passed = running_deadline(1.5)  # (a stop would leave too few turns for the count)
        while not passed():
            charge_id = f"r{len(sent)}"
            assert charge_v4(client, account_id, window, charge_id) == 10
            if sent:  # the one before: nothing
                assert charge_v4(client, account_id, window, sent[-1]) == 0
            sent.append(charge_id)
            expires, members = remembered_until(client, account_id)
            called_at = members[charge_id.encode()]
            for member, seen_ms in members.items():
                assert expires + 2 >= seen_ms + window, (member, expires, seen_ms)
                # trimmed at the last upkeep, a tenth of the window ago at most
                assert seen_ms > called_at - window - window // 10, (member, called_at, seen_ms)
            within = [member for member, seen_ms in members.items() if seen_ms > called_at - 900]
            oldest = min(within, key=members.__getitem__).decode()  # (after a hundred ms)
            assert charge_v4(client, account_id, window, oldest) == 0
            await asyncio.sleep(0.03 * (1 + len(sent) % 2))
        assert len(sent) > 20
        assert not client.exists(ids_key(account_id)) or client.pttl(ids_key(account_id)) <= 1100
        await asyncio.sleep(1.15)
        assert not client.exists(ids_key(account_id))


async def test_on_a_redis_cluster_a_failed_charge_is_kept_and_lands_once_it_answers(
    tmp_path: Path,
) -> None:
    """A Redis Cluster of the test's own (redis-py's client, which never says a command was
    not sent): the primary of the account's slot stopped, the charge fails and is kept; that
    primary started again (its cluster config kept in its directory), the charge lands, once.
    Before, every failed charge on a cluster was dropped and counted `unknown`."""
    cluster = RedisClusterServers(cluster_ports(3), tmp_path / "cluster")
    cluster.start()
    store = RedisStore(cluster.url)
    try:
        charges, dropped = charges_of(store)
        account_id = f"acct_{ids.token_hex(6)}"
        slow = LimitSpec(requests_per_minute=100, requests_per_day=1000, tokens_per_minute=600)
        await loaded(store)
        with redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port) as client:
            port = client.get_node_from_key(tpm_key(account_id)).port
        (owner,) = (node for node in cluster.nodes if node.port == port)
        owner.stop()
        began = time.monotonic()
        await charges.charge(account_id, slow, 1000, "r1")
        assert (charges.owing, dropped) == (1, [])
        owner.start(*CLUSTER_NODE, "--cluster-node-timeout", "2000")
        passed = running_deadline(30)
        while charges.kept:  # the cluster's slots served again, and the client told so
            assert not passed(), "the kept charge did not land in 30 s"
            await asyncio.sleep(0.2)
            await charges.landed(account_id)
        refilled = (time.monotonic() - began) * 600 / 60
        with redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port) as client:
            level = stored_level(client, account_id)
        # 1000 taken from a full bucket of 600, less its refill since the charge: once
        assert 600 - 1000 <= level <= 600 - 1000 + refilled, (level, refilled)
        assert dropped == []
    finally:
        await store.close()
        cluster.stop()


async def worker_keeping_a_charge(
    relay: RedisRelay, tmp_path: Path, account_id: str
) -> tuple[AppState, Metrics]:
    """The app's state on the store behind the relay (drain grace 30 s: a 1 s shutdown budget),
    with a 1000-token charge of `account_id` kept (its command swallowed)."""
    config = tmp_path / "klawd.toml"
    config.write_text(f'[store]\nurl = "{relay.url}"\n')
    metrics = Metrics([], [], [], "redis")
    state = await build_state(load_settings(config, {}), {}, metrics)
    charges = state.meter.token_charges
    await charges.charge(f"acct_{ids.token_hex(6)}", SPEC, 1, "r0")  # (the functions loaded)
    relay.swallow_requests = True
    await charges.charge(account_id, SPEC, 1000, "r1")
    assert charges.owing == 1
    return state, metrics


def not_charged_at_shutdown(metrics: Metrics) -> float:
    read = metrics.registry.get_sample_value
    return read("klawd_tokens_not_charged_total", {"reason": "shutdown"}) or 0.0


async def test_a_worker_s_shutdown_lands_its_kept_charge_on_a_store_back_up(
    relay: RedisRelay, redis_server: RedisServer, tmp_path: Path
) -> None:
    """No batch of the ledger settles after the charge was kept (its request's settled
    before): before, the worker's shutdown forgot it."""
    account_id = f"acct_{ids.token_hex(6)}"
    state, metrics = await worker_keeping_a_charge(relay, tmp_path, account_id)
    relay.swallow_requests = False
    await state.close()
    assert not state.meter.token_charges.kept
    assert not_charged_at_shutdown(metrics) == 0
    with redis.Redis(port=redis_server.port) as client:
        assert TPM - 1000 <= stored_level(client, account_id) <= TPM - 1000 + 100


async def test_a_worker_s_shutdown_on_a_silent_store_ends_in_its_budget_and_counts_the_loss(
    relay: RedisRelay, redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The store still swallows every command: the kept charge is sent, and its send has no
    reply by the bound; the shutdown ends within its budget (each of its steps bounded: the
    charges' at least a sixteenth of it), and the charge is said and counted lost."""
    account_id = f"acct_{ids.token_hex(6)}"
    state, metrics = await worker_keeping_a_charge(relay, tmp_path, account_id)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await state.close()
    took = loop.time() - began
    assert took < shutdown_budget_s(state.settings.server.streams.drain_grace_s) + 0.5, took
    assert 900 < not_charged_at_shutdown(metrics) <= 1000
    assert "lost with the worker" in caplog.text
    assert account_id not in caplog.text.split("lost with the worker")[-1]
    with redis.Redis(port=redis_server.port) as client:
        assert client.hget(tpm_key(account_id), "level") is None
