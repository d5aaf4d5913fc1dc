"""Token charges that can be sent again (`klawd_charge_tokens_v3`: every charge's id remembered
beside the account's bucket; gateway/token_charges.py), against real redis-servers: a charge whose
reply a relay on loopback swallowed is kept, sent again and counts once; one whose command it
swallowed counts once too; the same id twice counts once; a previous release's v2 charge shares
the bucket; on a Redis Cluster of the test's own, a charge failed by its slot's primary stopped
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
from gateway.token_charges import TokenCharges
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
        assert client.zcard(f"klawd:acct:{{{account_id}}}:charges") == 1


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
        seen = f"klawd:acct:{{{account_id}}}:charges"
        assert client.zrange(seen, 0, -1) == [b"c1", b"c2"]
        assert 299_000 < client.pttl(seen) <= 300_000


async def test_a_previous_release_s_v2_charge_and_a_v3_one_share_the_bucket(
    store: RedisStore, redis_server: RedisServer
) -> None:
    """A rolling deploy: a worker of the previous release charges with v2 (no id, never sent
    again), this release's with v3, on one account: both taken from the one bucket, once."""
    limiter = store.limiter()
    account_id = f"acct_{ids.token_hex(6)}"
    await limiter.charge_tokens(account_id, SPEC, 700, (("c1", 700),))
    with redis.Redis(port=redis_server.port) as client:
        client.fcall("klawd_charge_tokens_v2", 1, tpm_key(account_id), TPM, 300, 0)
        assert TPM - 1000 <= stored_level(client, account_id) <= TPM - 1000 + 20
        await limiter.charge_tokens(account_id, SPEC, 700, (("c1", 700),))  # seen: nothing
        assert TPM - 1000 <= stored_level(client, account_id) <= TPM - 1000 + 20


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
        deadline = time.monotonic() + 30
        while charges.kept:  # the cluster's slots served again, and the client told so
            assert time.monotonic() < deadline, "the kept charge did not land in 30 s"
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
