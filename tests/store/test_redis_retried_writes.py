"""A write redis-py sent again after its reply timed out, though the first try had run: the
answer is the first try's, not "already there", and what it takes is taken once.

redis-py (the Redis Cluster's client) sends a command again when its read times out (2 s
`socket_timeout`), and a stop of the process longer than that times the read out on resuming
even when the reply came meanwhile. Here the command is held unrun on the Redis side (`CLIENT
PAUSE … WRITE` on every node), then the test's own process is SIGSTOPped, Redis let go (the
command runs, its reply waits in the socket) and the process resumed 3 s later: its read times
out and redis-py sends the command again (the nodes count two calls). A "stored once" write
that answered the retry by what the first try had stored ("exists": False) lost, on the
gateway, the delivery's place in the due index (never sent) or a budget's threshold event; an
admission or a reservation took the request's credit and rate tokens twice, and a settle call
lost the credit grant its first try had reported (issue 19zzzzzl).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
import redis

from gateway.limits import KeyGate, LimitSpec
from gateway.store.base import (
    CreditGrant,
    Delivery,
    KeyBudget,
    Store,
    StoreError,
    User,
    Webhook,
    open_store,
)
from tests.live_bound import polls_async, wait_exit
from tests.redis_server import RedisClusterServers
from tests.store.test_store_contract import entry

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
    cluster: RedisClusterServers, call: Callable[[], Awaitable[Any]], command: str, calls: int = 2
) -> Any:
    """`call()`'s answer when its `command` ran once, held, and was sent again by redis-py
    after a stop of this process spent its read timeout (the premise checked: `calls` calls;
    1: redis-py did not send it again)."""
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
    assert calls_of(cluster, command) == calls, "redis-py sent the write again (or not)"
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


# Two requests a minute: the 3 s stop refills a tenth of one, so a request taken twice shows.
PLAN = LimitSpec(requests_per_minute=2, requests_per_day=1000)


def holds_of(cluster: RedisClusterServers, account_id: str) -> int:
    """How many holds the account's admissions recorded and no settle removed yet."""
    client = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    try:
        return int(client.zcard(f"klawd:acct:{{{account_id}}}:holds"))
    finally:
        client.close()


async def balance(store: Store, account_id: str) -> int:
    account = await store.get_account(account_id)
    assert account is not None
    return account.credits_micros


async def test_an_admission_taken_by_the_first_try_is_taken_once(
    store: Store, redis_cluster: RedisClusterServers
) -> None:
    account = await store.create_account("a", "free", 10_000)
    limiter = store.limiter()
    admission = await retried_after_a_stop(
        redis_cluster, lambda: limiter.admit(account.id, PLAN, 3_000), "fcall"
    )
    assert admission.admitted and admission.reserved_micros == 3_000 and admission.hold_id
    assert (admission.remaining_requests, admission.remaining_requests_day) == (1, 999)
    assert await balance(store, account.id) == 7_000, "reserved once"
    assert holds_of(redis_cluster, account.id) == 1
    held = msgspec.structs.replace(
        entry(account.id, 1, cost=1_000, reserved=3_000), hold_id=admission.hold_id
    )
    await store.settle([held])
    assert await balance(store, account.id) == 9_000, "its hold settled: nothing left held"
    assert holds_of(redis_cluster, account.id) == 0
    after = await limiter.admit(account.id, PLAN, 0)
    assert (after.remaining_requests, after.remaining_requests_day) == (0, 998), "one request"


async def test_an_admission_reserving_nothing_takes_its_request_once(
    store: Store, redis_cluster: RedisClusterServers
) -> None:
    account = await store.create_account("z", "free", 0)
    limiter = store.limiter()
    admission = await retried_after_a_stop(
        redis_cluster, lambda: limiter.admit(account.id, PLAN, 0), "fcall"
    )
    assert admission.admitted and admission.hold_id.endswith("|0"), "a hold of nothing"
    assert (admission.remaining_requests, admission.remaining_requests_day) == (1, 999)
    held = msgspec.structs.replace(
        entry(account.id, 1, cost=0, reserved=0), hold_id=admission.hold_id
    )
    assert holds_of(redis_cluster, account.id) == 1
    assert await store.settle([held]) == {account.id: CreditGrant(1, 0, account.created_at, 0)}
    assert holds_of(redis_cluster, account.id) == 0, "its settle removed it"
    after = await limiter.admit(account.id, PLAN, 0)
    assert after.admitted and after.remaining_requests_day == 998, "a second call takes one"


async def test_an_admission_held_against_a_key_budget_is_held_once(
    store: Store, redis_cluster: RedisClusterServers
) -> None:
    account = await store.create_account("k", "free", 10_000)
    key = KeyGate("key_1", "2026-11-26", budget=KeyBudget(day_micros=7_000))
    limiter = store.limiter()
    admission = await retried_after_a_stop(
        redis_cluster, lambda: limiter.admit(account.id, PLAN, 3_000, key), "fcall"
    )
    assert admission.admitted and admission.key_reserved_micros == 3_000
    assert admission.hold_id.endswith("|key_1|2026-11-26")
    assert await balance(store, account.id) == 7_000
    second = await limiter.admit(account.id, PLAN, 3_000, key)
    assert second.admitted, "the key's budget holds the first request once (6,000 of 7,000)"


async def test_a_reservation_taken_by_the_first_try_is_taken_once(
    store: Store, redis_cluster: RedisClusterServers
) -> None:
    account = await store.create_account("r", "free", 1_000)
    taken = await retried_after_a_stop(
        redis_cluster, lambda: store.reserve_credits(account.id, 300), "fcall"
    )
    assert taken is True
    assert await balance(store, account.id) == 700
    assert await store.reserve_credits(account.id, 700), "a second call takes its own"
    assert not await store.reserve_credits(account.id, 1)


async def test_a_settle_batch_resent_after_its_lost_reply_reports_the_credit_grant(
    store: Store, redis_cluster: RedisClusterServers
) -> None:
    """redis-py's pipeline does not send a settle call again after its read timed out: the
    batch fails, though it was settled, and the usage recorder sends it again (`resent`)."""
    account = await store.create_account("s", "free", 1_000)
    settled = entry(account.id, 1, cost=100, reserved=0)

    async def lost() -> None:
        with pytest.raises(StoreError):
            await store.settle([settled])

    await retried_after_a_stop(redis_cluster, lost, "fcall", calls=1)
    assert await balance(store, account.id) == 900, "the first try settled it"
    grants = await store.settle([settled], resent=True)
    assert grants == {account.id: CreditGrant(1, 1_000, account.created_at, 100)}
    assert await balance(store, account.id) == 900, "settled once"
    assert await store.settle([settled]) == {}, "a second batch settles nothing: no grant"


async def test_credits_added_by_the_first_try_are_added_once(
    store: Store, redis_cluster: RedisClusterServers
) -> None:
    account = await store.create_account("c", "free", 1_000)
    updated = await retried_after_a_stop(
        redis_cluster,
        lambda: store.update_account(account.id, add_credits_micros=500),
        "fcall",
        calls=3,  # the grant twice, then the account read back
    )
    assert updated is not None and updated.credits_micros == 1_500
    grants = await store.settle([entry(account.id, 1, cost=0, reserved=0)])
    grant = grants[account.id]
    assert (grant.seq, grant.granted_micros) == (2, 1_500), "one grant of the credits added"
    topped = await store.update_account(account.id, add_credits_micros=1)
    assert topped is not None and topped.credits_micros == 1_501, "a second call adds its own"
