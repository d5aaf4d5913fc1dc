"""A request cancelled while its admission's reply is on its way (its client went away) gives back
what the admission took once the reply comes: the account's credit and the key's budget
reservation, and nothing stays counted in flight. The app runs in process on the suite's real
redis-server, which is paused (`CLIENT PAUSE`) so that the admission's `FCALL` is surely in
flight when the request is cancelled; the embedded store's admission is checked where it can
be cancelled (the key's spend read from SQLite after the credit was reserved)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import uvloop

from gateway.limits import KeyGate, LimitSpec
from gateway.metering import utc_day
from gateway.store import resp
from gateway.store.base import Account, KeyBudget, open_store
from gateway.store.redis import RedisStore
from tests.conftest import ADMIN_TOKEN, free_port, gateway_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.integration.test_streams_freed import App, started
from tests.live_bound import Ran, within
from tests.redis_server import RedisServer

CREDIT_MICROS = 100_000_000  # the account's $100
BOUND_S = 10  # every wait here is bounded by this (never a timing assertion)


@pytest.fixture(scope="module")
def config(
    tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAI, redis_server: RedisServer
) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("cancelled-admission") / "klawd.toml"
    # the store's command timeout (2 s by default) out of the way of the reply the test holds
    store_url = f"{redis_server.url}?socket_timeout=60"
    gateway_config(path, free_port(), fake_openai.base_url, store_url=store_url)
    yield path


async def account_with_budgeted_key(app: App) -> tuple[str, str, str]:
    """An account with $100 and a key with a daily budget: (account id, key id, key)."""
    status, body = await app.request(
        "/admin/accounts",
        orjson.dumps({"name": "gone", "plan": "enterprise", "credits_usd": 100}),
        ADMIN_TOKEN,
    )
    assert status == 201, body
    account_id = orjson.loads(body)["id"]
    status, body = await app.request(
        f"/admin/accounts/{account_id}/keys",
        orjson.dumps({"budget": {"usd_per_day": 50}}),
        ADMIN_TOKEN,
    )
    assert status == 201, body
    created = orjson.loads(body)
    return account_id, created["id"], created["key"]


async def warmed(app: App) -> tuple[RedisStore, Account, str, str]:
    """The app's Redis store and `account_with_budgeted_key`'s account and key, warmed by one
    answered request: (store, the account after that request's settle batch, key id, key),
    once the store is quiet (nothing of that request's still on its way)."""
    store = app.state["klawd"].store._inner  # behind the store's timing proxy
    assert isinstance(store, RedisStore)
    account_id, key_id, key = await account_with_budgeted_key(app)
    status, answer = await app.request("/v1/chat/completions", chat_body(False), key)
    assert status == 200, answer  # warm: Redis's connection open, its functions loaded
    recorder = app.state["klawd"].meter._recorder
    client = store._resp
    assert client is not None

    async def quiet() -> bool:
        """That request's settle batch settled in Redis (its entries leave `pending` then), the
        checks after it done, and no reply owed on the store's connections."""
        return (
            recorder.pending == 0
            and recorder.checks_running == (0, 0)
            and not any(c.pending or c.corked for c in client._connections)
        )

    await until(quiet, "the warm request's settle batch and its checks")
    account = await store.get_account(account_id)
    assert account is not None
    return store, account, key_id, key


def chat_body(stream: bool) -> bytes:
    return orjson.dumps(
        {
            "model": "openai/gpt-fake",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": stream,
        }
    )


async def until(condition: Any, what: str) -> None:
    """Until `condition()` holds, for BOUND_S of this process's running time (a machine stopped
    meanwhile is not a hang: tests/live_bound.py)."""
    ran = Ran(time.monotonic)
    while not await condition():
        assert ran.tick() < BOUND_S, f"not within {BOUND_S} s: {what}"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("stream", [False, True], ids=["single", "stream"])
@pytest.mark.parametrize(
    "client_state",
    [
        # quiet: the admission is written at once and the upstream call prepared meanwhile
        # (cancelled at the admission gate); busy: it is queued with the loop turn's
        # commands and awaited before the upstream call starts (cancelled there)
        "quiet",
        "busy",
    ],
)
def test_a_request_cancelled_while_its_admission_travels_gives_back_what_it_took(
    config: Path,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    stream: bool,
    client_state: str,
) -> None:
    if client_state == "busy":
        monkeypatch.setattr(resp, "QUIET_S", 1e9)  # never quiet: `send` always queues
    paused = redis.Redis(port=redis_server.port)

    async def main() -> None:
        async with started(config) as app:
            state = app.state["klawd"]
            store, before, key_id, key = await warmed(app)
            account_id = before.id
            client = store._resp
            assert client is not None

            async def owed() -> bool:  # a reply owed to the request (its admission's)
                return any(c.pending or c.corked for c in client._connections)

            assert not await owed()
            deployment = state.catalog.get("openai/gpt-fake").key
            assert state.retrier.balancer.in_flight(deployment) == 0

            # past QUIET_S on every loop (uvloop's timers count whole milliseconds)
            await asyncio.sleep(0.001 + 2 * resp.QUIET_S if client_state == "quiet" else 0)
            # The admission's `FCALL` waits unrun until the test lifts the pause (a timed 1 s
            # `PAUSE ALL` could run out before the cancel on a loaded machine: the test then
            # cancelled an admitted request instead, and passed without its case).
            paused.client_pause(60_000, all=False)
            request = asyncio.ensure_future(
                app.request("/v1/chat/completions", chat_body(stream), key)
            )

            await until(owed, "the admission sent")
            await asyncio.sleep(0.05)  # what the request does while the reply is held back
            assert await owed(), "the admission's reply still held at the cancel"
            request.cancel()  # the client went away
            with contextlib.suppress(asyncio.CancelledError):
                await request
            paused.client_unpause()  # the reply comes now, to a request gone

            async def given_back() -> bool:
                account = await store.get_account(account_id)
                return account is not None and account.credits_micros == before.credits_micros

            await until(given_back, "the reservation given back")
            assert not client._undo, "nothing left waiting for a reply"
            assert state.retrier.balancer.in_flight(deployment) == 0
            reserved = paused.hget(
                f"klawd:acct:{{{account_id}}}:kspend:{key_id}:d:{utc_day(time.time())}", "r"
            )
            assert int(reserved or 0) == 0, "the key's budget reservation given back"

    try:
        uvloop.run(within(main(), 30))
    finally:
        paused.client_unpause()
        paused.close()


def test_the_embedded_admission_cancelled_while_the_keys_spend_is_read_gives_back_the_credit(
    tmp_path: Path,
) -> None:
    """The embedded store reserves the credit in process, then reads the key's spend of the day
    from SQLite (a thread) the first time it sees the key: a cancellation there must not keep
    the credit reserved (it would stay so for the process's life)."""

    async def main() -> None:
        store = open_store(f"sqlite:///{tmp_path}/cancelled.db")
        try:
            account = await store.create_account("gone", "free", 1_000)
            limiter = store.limiter()
            spec = LimitSpec(1_000, 10_000)
            day = utc_day(time.time())
            plain = KeyGate("key_plain", day, None, None, KeyBudget())
            # the balance read (one micro-dollar of it stays reserved: never settled here)
            assert (await limiter.admit(account.id, spec, 1, plain)).admitted
            budgeted = KeyGate("key_budget", day, None, None, KeyBudget(day_micros=5_000))
            admitting = asyncio.ensure_future(limiter.admit(account.id, spec, 600, budgeted))
            await asyncio.sleep(0)  # credit reserved; the key's spend being read
            assert not admitting.done()
            admitting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await admitting
            whole = await limiter.admit(account.id, spec, 999, plain)
            assert whole.admitted, "the whole balance is free again"
        finally:
            await store.close()

    uvloop.run(within(main(), 30))
