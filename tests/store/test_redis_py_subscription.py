"""The invalidation channel on redis-py (a Redis Cluster's subscriber, or a URL the lean client
does not take) is checked as the lean client's is (docs/decisions/0010): a subscription silent
for `subscription_check_s` is asked for a PING, an unanswered one is a lost channel (every cache
dropped, the channel taken again), and every cache is dropped once a subscription is confirmed.
Against the suite's real three-node cluster and single redis-server."""

from __future__ import annotations

import asyncio

import pytest
import redis

from gateway.store.base import open_store
from gateway.store.redis import RedisStore
from tests.live_bound import running_timeout
from tests.redis_relay import RedisRelay
from tests.redis_server import RedisClusterServers, RedisServer
from tests.store.test_redis_lean_client_only import revocation_heard

BOUND_S = 10  # every wait is bounded by this (never a timing assertion)


@pytest.mark.asked_again_if_stopped
async def test_a_silently_dead_cluster_subscription_is_found_by_its_ping_and_taken_again(
    redis_cluster: RedisClusterServers,
) -> None:
    """The cluster's subscriber reaches its seed node through a proxy that goes silent without
    closing anything: only the subscription's own PING finds it dead; the channel is taken
    again and a revocation published after that reaches the listener. A stop of the machine
    longer than the command timeout spends a live channel's PING wait (as the lean client's
    test says): the run is asked again (tests/asked_again.py)."""
    redis_cluster.flush()
    proxy = RedisRelay(redis_cluster.nodes[0].port)
    seed = (await proxy.start()).removeprefix("redis://").removesuffix("/0")
    listener = open_store(f"redis+cluster://{seed}")
    writer = open_store(redis_cluster.url)
    assert isinstance(listener, RedisStore) and listener.cluster
    listener.subscription_check_s = 0.2  # 5 s in a gateway
    heard: list[tuple[str, str]] = []
    try:
        listener.on_invalidate(lambda kind, ident: heard.append((kind, ident)))
        account = await writer.create_account("x", "free", 0)
        key = await writer.create_key(account.id, "k", "sk-klawd-cdead", "c" * 64, None)
        async with running_timeout(BOUND_S):
            while ("all", "") not in heard:  # subscribed (every cache dropped once then)
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # silent a while: answered PINGs keep the channel
        assert heard == [("all", "")], "a live channel is not taken again"
        heard.clear()
        proxy.go_silent()
        async with running_timeout(BOUND_S):
            while heard.count(("all", "")) < 2:  # lost (found by the PING), then taken again
                await asyncio.sleep(0.02)
            await writer.revoke_key(key.id, 5)
            await revocation_heard(heard, key.id)
    finally:
        await proxy.close()
        await writer.close()
        await listener.close()


async def test_a_redis_py_subscription_drops_every_cache_once_taken_again(
    redis_server: RedisServer,
) -> None:
    """A single Redis behind a URL the lean client does not take (redis-py's subscriber): a
    revocation published while the channel is being taken again is not heard, so every cache
    is dropped once the subscription is confirmed again."""
    redis_server.flush()
    url = f"{redis_server.url}?client_name=klawd"  # an argument only redis-py takes
    writer, listener = open_store(redis_server.url), open_store(url)
    assert isinstance(listener, RedisStore) and listener._resp is None
    heard: list[tuple[str, str]] = []
    admin = redis.Redis(port=redis_server.port)
    try:
        listener.on_invalidate(lambda kind, ident: heard.append((kind, ident)))
        account = await writer.create_account("x", "free", 0)
        key = await writer.create_key(account.id, "k", "sk-klawd-pygap", "p" * 64, None)
        async with running_timeout(BOUND_S):
            while ("all", "") not in heard:
                await asyncio.sleep(0.02)
            heard.clear()
            assert admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub") == 1
            while ("all", "") not in heard:  # the loss, seen
                await asyncio.sleep(0.02)
            await writer.revoke_key(key.id, 5)  # nobody may hear it
            published_at = len(heard)
            while ("all", "") not in heard[published_at:]:  # subscribed again: dropped again
                await asyncio.sleep(0.02)
    finally:
        admin.close()
        await writer.close()
        await listener.close()
