"""Tokens kept while the Redis store was not reached (gateway/token_charges.py), charged to a
real redis-server stopped and started again, through the Meter's own admission and charge: the
account's next admission after the outage sees them, and an account already short when the
outage began is charged as short as it was. The served path (`klawd serve`, the late charge on
the next settled batch) is tests/integration/test_store_lost_after_admission.py's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis

from gateway.auth import AuthContext
from gateway.billing import TokenUsage
from gateway.errors import RateLimited
from gateway.metering import AccountCache, Meter, Ticket
from gateway.settings import load_settings
from gateway.store.base import CustomLimits
from gateway.store.redis import RedisStore
from gateway.usage import UsageRecorder
from tests.conftest import PERSISTED
from tests.redis_server import RedisServer


@pytest.fixture
async def store(redis_alone: RedisServer) -> AsyncIterator[RedisStore]:
    opened = RedisStore(redis_alone.url)
    try:
        yield opened
    finally:
        await opened.close()


async def metered(store: RedisStore, tokens_per_minute: int) -> tuple[Meter, AuthContext]:
    """The app's Meter on the store's limiter, for a new account with that token limit."""
    account = await store.create_account("t", "free", 1_000_000_000)
    await store.update_account(account.id, limits=CustomLimits(tokens_per_minute=tokens_per_minute))
    meter = Meter(load_settings(None), AccountCache(store), store.limiter(), UsageRecorder(store))
    return meter, AuthContext("key_1", account.id, None)


async def admitted(meter: Meter, auth: AuthContext, request_id: str) -> Ticket:
    return await meter.admit(auth, request_id, "openai/gpt-fake", [], 0)


async def stopped(server: RedisServer) -> None:
    """The server stopped, and its connections' end read by the store's client (a loop turn
    that polls): a charge then fails at once (not reached) rather than on its command timeout
    (sent on a connection whose end is still unread; kept as well, test_idempotent_token_charges
    has that case)."""
    server.stop()
    await asyncio.sleep(0.05)


def bucket_level(server: RedisServer, account_id: str) -> float:
    """The account's tokens/minute bucket's level as last stored (gateway/store/lua/klawd.lua)."""
    client = redis.Redis(port=server.port)
    try:
        return float(client.hget(f"klawd:acct:{{{account_id}}}:tpm", "level") or "nan")
    finally:
        client.close()


async def test_the_first_admission_after_the_outage_sees_the_tokens_kept_during_it(
    store: RedisStore, redis_alone: RedisServer
) -> None:
    """10 tokens a minute, a 16-token answer whose charge finds the store stopped: the
    account's first admission once the store is back is refused (429), the kept charge having
    landed first, once. Before, it was admitted (the store's bucket full: the charge waited for
    the usage recorder's next settled batch)."""
    tpm, used = 10, 16
    meter, auth = await metered(store, tpm)
    ticket = await admitted(meter, auth, "r1")
    await stopped(redis_alone)
    await meter.charge_tokens(ticket, TokenUsage(prompt_tokens=12, completion_tokens=4))
    assert meter.token_charges.owing == 1  # kept: the charge never left the worker
    redis_alone.start(*PERSISTED)
    with pytest.raises(RateLimited) as refused:
        await admitted(meter, auth, "r2")
    assert refused.value.retry_after_s >= 1  # type: ignore[operator]
    assert (meter.token_charges.owing, meter.token_charges.kept) == (0, False)
    level = bucket_level(redis_alone, auth.account_id)
    # in debt by the answer's tokens, less a bucket's refill while the store was away: once
    assert tpm - used - 0.5 <= level < 0, level
    with pytest.raises(RateLimited):
        await admitted(meter, auth, "r3")
    assert bucket_level(redis_alone, auth.account_id) == level  # not charged again


async def test_an_account_short_when_the_outage_began_is_charged_as_short_as_it_was(
    store: RedisStore, redis_alone: RedisServer
) -> None:
    """6000 tokens a minute (100 a second): 5000 charged with the store up (1000 left), 8000
    kept while it is stopped, the store back 2 s later. The bucket is then what it would be had
    both charges run on time: 1000 - 8000 plus 100 a second since the first, no more and no
    less. Before, the kept 8000 were taken from a bucket assumed full at the outage, whose
    shortfall the worker's refill had lowered while the store's bucket refilled too: the
    refill counted twice (about 200 tokens here) and the account under-charged."""
    tpm, rate = 6000, 100.0
    meter, auth = await metered(store, tpm)
    ticket = await admitted(meter, auth, "r1")
    first_before = time.monotonic()
    await meter.charge_tokens(ticket, TokenUsage(prompt_tokens=5000, completion_tokens=0))
    first_after = time.monotonic()
    await stopped(redis_alone)
    await meter.charge_tokens(ticket, TokenUsage(prompt_tokens=8000, completion_tokens=0))
    assert meter.token_charges.owing == 1
    time.sleep(2)
    redis_alone.start(*PERSISTED)
    landed_before = time.monotonic()
    with pytest.raises(RateLimited):
        await admitted(meter, auth, "r2")
    landed_after = time.monotonic()
    level = bucket_level(redis_alone, auth.account_id)
    # the level the store's bucket has once the kept charge landed, between these clocks' bounds
    least = tpm - 5000 - 8000 + rate * (landed_before - first_after)
    most = tpm - 5000 - 8000 + rate * (landed_after - first_before)
    assert least - 1 <= level <= most + 1, (least, level, most)
