"""On a single Redis the store speaks only through the lean client (gateway/store/resp.py):
every command, the pipelined reads, the account's transaction and the invalidation channel; so
redis-py is never imported by a process that opens such a store (docs/decisions/0010)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest
import redis

from gateway.store.base import open_store
from gateway.store.redis import RedisStore
from gateway.store.resp import RespClient, RespConnectionError
from tests.live_bound import running_timeout
from tests.redis_relay import RedisRelay
from tests.redis_server import RedisServer

BOUND_S = 10  # every wait is bounded by this (never a timing assertion)


def test_a_process_on_a_single_redis_never_imports_redis_py(redis_server: RedisServer) -> None:
    redis_server.flush()
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from gateway.store.base import UsageEntry, open_store

        async def main():
            store = open_store({redis_server.url!r})
            heard = []
            store.on_invalidate(lambda kind, ident: heard.append((kind, ident)))
            account = await store.create_account("lean", "free", 1_000)
            key = await store.create_key(account.id, "k", "sk-klawd-lean", "a" * 64, None)
            assert (await store.key_by_hash("a" * 64)).id == key.id
            assert (await store.get_account(account.id)).credits_micros == 1_000
            assert await store.reserve_credits(account.id, 300)
            entry = UsageEntry(
                id="use_lean_1", ts=1_795_000_000.0, day="2026-11-26", account_id=account.id,
                key_id=key.id, model="m/x", provider="m", prompt_tokens=1, completion_tokens=1,
                images=0, cost_micros=100, reserved_micros=300, latency_ms=1, status=200,
                request_id="req_1", stream=False,
            )
            await store.settle([entry])
            assert (await store.key_spend(account.id, [key.id], "2026-11-26"))[key.id].today == 100
            await store.ping()
            for _ in range(1500):  # the subscription confirmed (it drops every cache): 30 s
                if ("all", "") in heard:
                    break
                await asyncio.sleep(0.02)
            assert ("all", "") in heard, heard
            await store.revoke_key(key.id, 5)
            for _ in range(1500):  # bounded: 30 s (a hang's guard)
                if ("key", key.id) in heard:
                    break
                await asyncio.sleep(0.02)
            assert ("key", key.id) in heard, heard
            await store.close()
            print("redis-py imported:", "redis" in sys.modules)

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "redis-py imported: False" in done.stdout


async def test_a_lost_subscription_drops_the_caches_and_resubscribes(
    redis_server: RedisServer,
) -> None:
    redis_server.flush()
    writer, listener = open_store(redis_server.url), open_store(redis_server.url)
    assert isinstance(listener, RedisStore) and listener._resp is not None
    heard: list[tuple[str, str]] = []
    admin = redis.Redis(port=redis_server.port)
    try:
        listener.on_invalidate(lambda kind, ident: heard.append((kind, ident)))
        account = await writer.create_account("x", "free", 0)
        async with running_timeout(BOUND_S):
            while admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub") == 0:
                await asyncio.sleep(0.02)  # until the subscription exists, then cut it
            while ("all", "") not in heard:
                await asyncio.sleep(0.02)
            # subscribed again (after its pause): what is published now is heard
            while ("account", account.id) not in heard:
                await writer.update_account(account.id, plan="pro")
                await asyncio.sleep(0.1)
    finally:
        admin.close()
        await writer.close()
        await listener.close()


async def test_a_refused_subscription_raises(redis_server: RedisServer) -> None:
    # AUTH with a password on a server that has none is refused
    client = RespClient.from_url(f"redis://:wrong@127.0.0.1:{redis_server.port}/0")
    try:
        with pytest.raises(RespConnectionError, match="refused the subscription"):
            async with running_timeout(BOUND_S):
                async for _ in client.subscribe("klawd:test"):
                    pass
    finally:
        await client.close()


async def test_subscribe_yields_what_is_published(redis_server: RedisServer) -> None:
    client = RespClient.from_url(redis_server.url)
    publisher = redis.Redis(port=redis_server.port)
    got: list[bytes] = []

    async def listen() -> None:
        async for message in client.subscribe("klawd:test"):
            got.append(message)
            if len(got) == 2:
                return

    task = asyncio.create_task(listen())
    try:
        async with running_timeout(BOUND_S):
            while publisher.publish("klawd:test", "one") == 0:
                await asyncio.sleep(0.02)  # until subscribed
            publisher.publish("klawd:test", "two")
            await task
        assert got == [b"one", b"two"]
    finally:
        task.cancel()
        publisher.close()
        await client.close()


async def revocation_heard(heard: list[tuple[str, str]], key_id: str) -> None:
    """Until the listener hears the key's revocation. A channel lost again meanwhile (a third
    drop of every cache: the lost and the taken-again channel made two) fails at once rather
    than waiting out the bound: the revocation may have been published into the gap."""
    while ("key", key_id) not in heard:
        assert heard.count(("all", "")) == 2, f"the channel was lost again: {heard}"
        await asyncio.sleep(0.02)


@pytest.mark.asked_again_if_stopped
async def test_a_silently_dead_subscription_is_found_by_its_ping_and_taken_again(
    redis_server: RedisServer,
) -> None:
    """Nothing closes the connection: only the subscription's own PING, unanswered within the
    command timeout, finds it dead; every cache is dropped, the channel is taken again, and a
    revocation published after that reaches the listener. A stop of the machine longer than
    the command timeout (2 s, the loop's wall clock) spends a PING's wait on the new channel
    too: lost again, it misses the revocation (every cache dropped instead, which is right),
    and the run is asked again (tests/asked_again.py)."""
    redis_server.flush()
    proxy = RedisRelay(redis_server.port)
    listener = open_store(await proxy.start())
    writer = open_store(redis_server.url)
    assert isinstance(listener, RedisStore) and listener._resp is not None
    listener._resp.subscription_check_s = 0.2  # 5 s in a gateway
    heard: list[tuple[str, str]] = []
    try:
        listener.on_invalidate(lambda kind, ident: heard.append((kind, ident)))
        account = await writer.create_account("x", "free", 0)
        key = await writer.create_key(account.id, "k", "sk-klawd-dead", "d" * 64, None)
        async with running_timeout(BOUND_S):
            while ("all", "") not in heard:  # subscribed (every cache dropped once then)
                await asyncio.sleep(0.02)
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


async def test_what_was_published_while_the_channel_was_down_is_covered_by_a_drop(
    redis_server: RedisServer,
) -> None:
    """A revocation published while the subscription is being taken again is lost, so every
    cache is dropped once the subscription is back (not only when it was lost)."""
    redis_server.flush()
    writer, listener = open_store(redis_server.url), open_store(redis_server.url)
    assert isinstance(listener, RedisStore)
    heard: list[tuple[str, str]] = []
    admin = redis.Redis(port=redis_server.port)
    try:
        listener.on_invalidate(lambda kind, ident: heard.append((kind, ident)))
        account = await writer.create_account("x", "free", 0)
        key = await writer.create_key(account.id, "k", "sk-klawd-gap", "g" * 64, None)
        async with running_timeout(BOUND_S):
            while ("all", "") not in heard:
                await asyncio.sleep(0.02)
            heard.clear()
            assert admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub") == 1
            while ("all", "") not in heard:  # the loss, seen
                await asyncio.sleep(0.02)
            assert admin.pubsub_numsub("klawd:invalidate") == [(b"klawd:invalidate", 0)]
            await writer.revoke_key(key.id, 5)  # nobody hears it
            published_at = len(heard)
            while ("all", "") not in heard[published_at:]:  # subscribed again: dropped again
                await asyncio.sleep(0.02)
        assert ("key", key.id) not in heard
    finally:
        admin.close()
        await writer.close()
        await listener.close()
