"""A write redis-py sent again after its reply timed out, though the first try had run: the
answer is the first try's, not "already there".

redis-py (the Redis Cluster's client) sends a command again when its read times out (2 s
`socket_timeout`), and a stop of the process longer than that times the read out on resuming
even when the reply came meanwhile. Here the command is held unrun on the Redis side (`CLIENT
PAUSE … WRITE` on every node), then the test's own process is SIGSTOPped, Redis let go (the
command runs, its reply waits in the socket) and the process resumed 3 s later: its read times
out and redis-py sends the command again (the nodes count two calls). A "stored once" write
that answered the retry by what the first try had stored ("exists": False) lost, on the
gateway, the delivery's place in the due index (never sent) or a budget's threshold event.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis

from gateway.store.base import Delivery, Store, User, Webhook, open_store
from tests.live_bound import polls_async, wait_exit
from tests.redis_server import RedisClusterServers

BOUND_S = 30  # a polling wait's hang guard, in running time (never a timing assertion)

# Stops the test's process once told to (a line on stdin), lets the paused nodes go while it is
# stopped, and resumes it 3 s later: past the client's 2 s read timeout from any send before.
STOPPER = (
    "import os, signal, socket, sys, time\n"
    "pid, ports = int(sys.argv[1]), [int(p) for p in sys.argv[2:]]\n"
    "sys.stdin.readline()\n"
    "os.kill(pid, signal.SIGSTOP)\n"
    "try:\n"
    "    for port in ports:\n"
    "        with socket.create_connection(('127.0.0.1', port)) as node:\n"
    "            node.sendall(b'CLIENT UNPAUSE\\r\\n')\n"
    "            node.recv(16)\n"
    "    time.sleep(3)\n"
    "finally:\n"
    "    os.kill(pid, signal.SIGCONT)\n"
)


def nodes_info(cluster: RedisClusterServers, section: str) -> list[dict[str, Any]]:
    infos = []
    for node in cluster.nodes:
        client = redis.Redis(port=node.port)
        try:
            infos.append(client.info(section))
        finally:
            client.close()
    return infos


def on_every_node(cluster: RedisClusterServers, *command: str) -> None:
    for node in cluster.nodes:
        client = redis.Redis(port=node.port)
        try:
            client.execute_command(*command)
        finally:
            client.close()


def calls_of(cluster: RedisClusterServers, command: str) -> int:
    stats = nodes_info(cluster, "commandstats")
    return sum(info.get(f"cmdstat_{command}", {}).get("calls", 0) for info in stats)


async def retried_after_a_stop(
    cluster: RedisClusterServers, call: Callable[[], Awaitable[Any]], command: str
) -> Any:
    """`call()`'s answer when its `command` ran once, held, and was sent again by redis-py
    after a stop of this process spent its read timeout (the premise checked: two calls)."""
    on_every_node(cluster, "CONFIG", "RESETSTAT")
    on_every_node(cluster, "CLIENT", "PAUSE", "30000", "WRITE")  # the stopper lifts it
    ports = [str(node.port) for node in cluster.nodes]
    with subprocess.Popen(
        [sys.executable, "-c", STOPPER, str(os.getpid()), *ports], stdin=subprocess.PIPE
    ) as stopper:
        assert stopper.stdin is not None
        try:
            answer = asyncio.ensure_future(call())
            async for _ in polls_async(BOUND_S, 0.01):
                if sum(info["blocked_clients"] for info in nodes_info(cluster, "clients")):
                    break
            assert not answer.done(), "the write was not held by the pause"
            stopper.stdin.write(b"go\n")
            stopper.stdin.flush()
            result = await answer
        finally:
            on_every_node(cluster, "CLIENT", "UNPAUSE")
            stopper.stdin.close()
            assert wait_exit(stopper, BOUND_S) == 0
    assert calls_of(cluster, command) == 2, "redis-py sent the write again"
    return result


def delivery(account_id: str, ident: str) -> Delivery:
    return Delivery(
        id=ident,
        account_id=account_id,
        type="webhook.test",
        body=f'{{"id":"{ident}"}}',
        created_at=100.0,
        status="pending",
        next_attempt_at=100.0,
    )


@pytest.fixture
async def store(redis_cluster: RedisClusterServers) -> AsyncIterator[Store]:
    redis_cluster.flush()
    opened = open_store(redis_cluster.url)
    warm = await opened.create_account("warm", "free", 0)
    assert await opened.reserve_credits(warm.id, 0)  # the functions loaded before the pause
    yield opened
    await opened.close()


async def test_a_delivery_stored_by_the_first_try_is_stored_and_due(
    store: Store, redis_cluster: RedisClusterServers
) -> None:
    account = await store.create_account("d", "free", 0)
    new = delivery(account.id, "evt_retried")
    stored = await retried_after_a_stop(redis_cluster, lambda: store.add_delivery(new), "fcall")
    assert stored is True
    assert [d.id for d in await store.due_deliveries(200.0, 10)] == ["evt_retried"]
    assert [d.id for d in await store.list_deliveries(account.id, 10)] == ["evt_retried"]
    assert not await store.add_delivery(new), "a second call with the same event is refused"


async def test_a_usage_event_stored_by_the_first_try_is_stored_and_due(
    store: Store, redis_cluster: RedisClusterServers
) -> None:
    account = await store.create_account("u", "free", 0)
    hook = Webhook(account.id, "https://example.com/hook", ("usage.updated",), "s", None, None, 1)
    await store.put_webhook(hook, await store.usage_cursor(account.id), 10)
    event = delivery(account.id, "evt_usage")
    stored = await retried_after_a_stop(
        redis_cluster, lambda: store.add_usage_event(account.id, 11, "c1", event), "fcall"
    )
    assert stored is True
    assert await store.webhook_usage_state(account.id) == ("c1", 11)
    assert [d.id for d in await store.due_deliveries(200.0, 10)] == ["evt_usage"]
    again = delivery(account.id, "evt_again")
    assert not await store.add_usage_event(account.id, 11, "c2", again), "a period once"


async def test_an_invoice_paid_by_the_first_try_is_paid_with_its_event_due(
    store: Store, redis_cluster: RedisClusterServers
) -> None:
    account = await store.create_account("i", "free", 0)
    invoice = await store.create_invoice(account.id, 1_000_000, "November")
    event = delivery(account.id, "evt_paid")
    paid, changed = await retried_after_a_stop(
        redis_cluster, lambda: store.pay_invoice(invoice, 77, event), "fcall"
    )
    assert changed is True and paid.status == "paid" and paid.paid_at == 77
    assert [d.id for d in await store.due_deliveries(200.0, 10)] == ["evt_paid"]
    _, changed_again = await store.pay_invoice(invoice, 88, delivery(account.id, "evt_2"))
    assert not changed_again, "paid once"


async def test_a_mark_set_by_the_first_try_is_claimed(
    store: Store, redis_cluster: RedisClusterServers
) -> None:
    name = "budget:key_x:d:2026-12-07:80"
    claimed = await retried_after_a_stop(redis_cluster, lambda: store.mark_once(name), "set")
    assert claimed is True
    assert not await store.mark_once(name), "a second call finds it claimed"


async def test_a_user_created_by_the_first_try_is_created(
    store: Store, redis_cluster: RedisClusterServers
) -> None:
    account = await store.create_account("u", "free", 0)
    user = User("ada@example.com", account.id, "scrypt$x", 5)
    created = await retried_after_a_stop(redis_cluster, lambda: store.create_user(user), "set")
    assert created is True
    assert await store.get_user("ada@example.com") == user
    assert not await store.create_user(User("ada@example.com", account.id, "scrypt$y", 6))
