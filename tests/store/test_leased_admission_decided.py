"""Meter.start on Redis with an admission lease held (decision 0003, "Admission leases"): an
admission decided in process from the lease is returned decided, as the embedded store's is
(a DecidedAdmission: no pending admission, no gate, no reply to read; decision 0010,
twenty-seventh pass), with the lease's hold on its ticket and its settlement on a failure; the
admissions before the lease is held still go by Redis (a PendingAdmission)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.auth import AuthContext
from gateway.metering import AccountCache, Meter
from gateway.pending_admission import CLIENT_CLOSED, DecidedAdmission, PendingAdmission
from gateway.settings import load_settings
from gateway.store.base import CustomLimits, open_store
from gateway.store.redis import RedisStore
from gateway.store.redis_limiter import LEASE_MAX
from tests.redis_server import RedisServer
from tests.usage_entries import Recorded

RESERVE = 1_000
BIG = CustomLimits(requests_per_minute=1_000_000, requests_per_day=1_000_000)


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    redis_server.flush()
    opened = open_store(redis_server.url)
    assert isinstance(opened, RedisStore)
    try:
        yield opened
    finally:
        await opened.close()


async def test_an_admission_from_a_lease_is_decided_at_once_as_the_embedded_stores(
    store: RedisStore,
) -> None:
    account = await store.create_account("l", "free", 1_000_000_000)
    await store.update_account(account.id, limits=BIG)
    recorded = Recorded()
    meter = Meter(load_settings(None), AccountCache(store), store.limiter(), recorded)  # type: ignore[arg-type]
    auth = AuthContext("key_l", account.id, None)
    kinds = []
    decided = None
    for n in range(LEASE_MAX):  # until the worker holds a lease (a few admissions in)
        admitting = await meter.start(auth, f"req_{n}", "m", [], lambda _: RESERVE)
        kinds.append(type(admitting))
        await admitting.read_reply()
        assert admitting.ticket().admission.admitted
        if isinstance(admitting, DecidedAdmission):
            decided = admitting
            break
    assert decided is not None, "a lease was taken and an admission decided from it"
    assert kinds[0] is PendingAdmission, "before any lease: by Redis"
    ticket = decided.ticket()
    assert ticket.admission.reserved_micros == RESERVE
    assert ticket.admission.hold_id.startswith("L"), "reserved from the lease's hold"
    before = len(recorded.entries)
    with pytest.raises(asyncio.CancelledError):
        async with decided.overlapping(stream=True):
            raise asyncio.CancelledError  # the client went away during the upstream call
    assert [
        (e.status, e.reserved_micros, e.hold_id, e.stream) for e in recorded.entries[before:]
    ] == [(CLIENT_CLOSED, RESERVE, ticket.admission.hold_id, True)], (
        "settled at no cost, out of the lease's hold"
    )
