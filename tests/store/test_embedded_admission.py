"""The embedded store's admission in one call (gateway._core.Limiter.admit against the SQLite
store's credit book, decision 0011's twenty-eighth pass): each refusal's reason, the reads the
book asks for first (a balance never read, a short one read again, a key's spend), the last
credit between two admissions, a cancellation during a read, and Meter.start's decided
admission (no pending one) with its refusal, its ticket and its settlement on a failure."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest

from gateway.auth import AuthContext
from gateway.errors import InsufficientCredits, RateLimited
from gateway.limits import READ_BALANCE, READ_SPEND, Admission, EmbeddedLimiter, KeyGate, LimitSpec
from gateway.metering import AccountCache, Meter
from gateway.metrics import Metrics
from gateway.pending_admission import CLIENT_CLOSED, DecidedAdmission
from gateway.settings import load_settings
from gateway.store.base import KeyBudget
from gateway.store.sqlite import SqliteStore
from gateway.store_metrics import _Timed
from tests.scrape import parse, total
from tests.usage_entries import Recorded

DAY = "2026-11-26"
SPEC = LimitSpec(requests_per_minute=5, requests_per_day=100)


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "a.db")
    try:
        yield store
    finally:
        await store.close()


def limiter_of(store: SqliteStore) -> EmbeddedLimiter:
    limiter = store.limiter()
    assert isinstance(limiter, EmbeddedLimiter)
    return limiter


async def left_this_minute(limiter: EmbeddedLimiter, account_id: str) -> int:
    return (await limiter.peek(account_id, SPEC)).remaining_requests


async def test_each_refusal_says_its_reason_and_takes_nothing(sqlite: SqliteStore) -> None:
    account = await sqlite.create_account("r", "free", 100)
    limiter = limiter_of(sqlite)
    broke = await limiter.admit(account.id, SPEC, 101)
    assert broke.outcome == "insufficient_credits" and broke.reserved_micros == 0
    budgeted = KeyGate("key_b", DAY, budget=KeyBudget(day_micros=10))
    over = await limiter.admit(account.id, SPEC, 11, budgeted)
    assert over.outcome == "key_budget_exceeded" and over.key_reserved_micros == 0
    assert sqlite.book.reserved_credits(account.id) == 0, "no credit held for the key's refusal"
    assert await left_this_minute(limiter, account.id) == 5, "no request counted"
    own = KeyGate("key_k", DAY, requests_per_minute=1)
    assert (await limiter.admit(account.id, SPEC, 0, own)).admitted
    by_key = await limiter.admit(account.id, SPEC, 0, own)
    assert by_key.outcome == "rate_limited" and by_key.limited_by_key
    assert (by_key.limit_requests, by_key.remaining_requests) == (1, 0)
    for _ in range(4):
        assert (await limiter.admit(account.id, SPEC, 1)).admitted
    plan = await limiter.admit(account.id, SPEC, 1)
    assert plan.outcome == "rate_limited" and not plan.limited_by_key
    assert plan.retry_after_s > 0 and plan.remaining_requests == 0
    assert sqlite.book.reserved_credits(account.id) == 4, "the plan's refusal reserved nothing"


async def test_the_book_asks_for_what_it_has_not_read(sqlite: SqliteStore) -> None:
    account = await sqlite.create_account("n", "free", 100)
    limiter = limiter_of(sqlite)
    key = KeyGate("key_n", DAY, budget=KeyBudget(total_micros=1_000))
    assert limiter.decide(account.id, SPEC, 10, key) == READ_BALANCE | READ_SPEND
    free = limiter.decide(account.id, SPEC, 0)
    assert isinstance(free, Admission) and free.admitted, "no credit asked, none read"
    assert await left_this_minute(limiter, account.id) == 4, "only the free one counted"
    admitted = await limiter.admit(account.id, SPEC, 10, key)
    assert admitted.admitted
    assert (admitted.reserved_micros, admitted.key_reserved_micros) == (10, 10)
    again = limiter.decide(account.id, SPEC, 10, key)
    assert isinstance(again, Admission) and again.admitted, "read once, decided in one call"


async def test_a_grown_balance_is_read_again_before_a_refusal(
    sqlite: SqliteStore, tmp_path: Path
) -> None:
    account = await sqlite.create_account("g", "free", 100)
    limiter = limiter_of(sqlite)
    assert (await limiter.admit(account.id, SPEC, 60)).admitted
    assert limiter.decide(account.id, SPEC, 60) == READ_BALANCE, "short: read again first"
    with sqlite3.connect(tmp_path / "a.db") as other:  # credits added by another process
        other.execute("UPDATE accounts SET credits_micros = 1000 WHERE id = ?", (account.id,))
    grown = await limiter.admit(account.id, SPEC, 600)
    assert grown.admitted and sqlite.book.reserved_credits(account.id) == 660
    refused = await limiter.admit(account.id, SPEC, 341)
    assert refused.outcome == "insufficient_credits", "read again, still short: refused"


async def test_two_admissions_for_the_last_credit_admit_one(sqlite: SqliteStore) -> None:
    account = await sqlite.create_account("c", "free", 100)
    limiter = limiter_of(sqlite)
    # Both find the balance unread, both read it, then one call each decides.
    both = await asyncio.gather(*(limiter.admit(account.id, SPEC, 100) for _ in range(2)))
    assert sorted(a.outcome for a in both) == ["admitted", "insufficient_credits"]
    assert sqlite.book.reserved_credits(account.id) == 100
    assert await left_this_minute(limiter, account.id) == 4, "the refused one counted nothing"
    stored = await sqlite.get_account(account.id)
    assert stored is not None and stored.credits_micros == 0, "reported net of the reservation"


async def test_an_admission_cancelled_while_reading_takes_nothing(
    sqlite: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = await sqlite.create_account("x", "free", 100)
    limiter = limiter_of(sqlite)
    reading = asyncio.Event()

    async def stalled_read(account_id: str) -> bool:
        reading.set()
        await asyncio.Event().wait()
        return True

    monkeypatch.setattr(sqlite, "read_balance", stalled_read)
    admitting = asyncio.ensure_future(limiter.admit(account.id, SPEC, 50))
    await reading.wait()
    admitting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await admitting
    assert sqlite.book.reserved_credits(account.id) == 0
    assert await left_this_minute(limiter, account.id) == 5


async def test_meter_start_decides_an_embedded_admission_at_once(sqlite: SqliteStore) -> None:
    account = await sqlite.create_account("m", "free", 100)
    recorded = Recorded()
    meter = Meter(load_settings(None), AccountCache(sqlite), sqlite.limiter(), recorded)  # type: ignore[arg-type]
    auth = AuthContext("key_m", account.id, None)
    admitting = await meter.start(auth, "req_1", "m", [], lambda _: 40)
    assert isinstance(admitting, DecidedAdmission), "no pending admission for the embedded store"
    ticket = admitting.ticket()
    assert ticket.admission.admitted and ticket.admission.reserved_micros == 40
    with pytest.raises(asyncio.CancelledError):
        async with admitting.overlapping(stream=True):
            raise asyncio.CancelledError  # the client went away during the upstream call
    assert [(e.status, e.reserved_micros, e.stream) for e in recorded.entries] == [
        (CLIENT_CLOSED, 40, True)
    ], "settled at no cost: its reservation given back at settlement"
    with pytest.raises(InsufficientCredits) as broke:
        await meter.start(auth, "req_2", "m", [], lambda _: 61)
    assert broke.value.extra_headers["x-ratelimit-limit-requests"] == "10"
    for _ in range(9):
        await meter.start(auth, "req_n", "m", [], lambda _: 0)
    with pytest.raises(RateLimited) as limited:
        await meter.start(auth, "req_3", "m", [], lambda _: 0)
    assert limited.value.extra_headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(RateLimited):  # the remembered denial: no limiter call
        await meter.start(auth, "req_4", "m", [], lambda _: 0)


def store_samples(metrics: Metrics) -> tuple[float, float]:
    """(admit durations observed, admit errors counted) of the embedded store."""
    metrics.buffer.flush()
    samples = parse(generate_latest(metrics.registry).decode())
    return (
        total(samples, "klawd_store_operation_duration_seconds_count", operation="admit"),
        total(samples, "klawd_store_errors_total", operation="admit"),
    )


async def test_the_limiter_times_its_decided_admissions_as_the_stores_admit(
    sqlite: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind the store's timing proxy, `decide` is the limiter's own (no wrapper's frame per
    admission, decision 0011's twenty-ninth pass) and times itself as `operation="admit"`: one
    duration per decided admission, admitted or refused; none for an answer that asks for a
    read first (the awaited `admit` after it is timed, once for the admission); a failure
    counted as the operation's error."""
    account = await sqlite.create_account("t", "free", 100)
    metrics = Metrics([], [], ["free"], "sqlite")
    inner = limiter_of(sqlite)
    timed = _Timed(inner, metrics)
    assert timed.decide == inner.decide, "the limiter's own method, no wrapper around it"
    assert timed.decide(account.id, SPEC, 10) == READ_BALANCE, "a balance never read"
    assert store_samples(metrics) == (0, 0)
    assert (await timed.admit(account.id, SPEC, 10)).admitted  # reads it: timed as admit
    assert store_samples(metrics) == (1, 0)
    own = KeyGate("key_t", DAY, requests_per_minute=1)
    decided = timed.decide(account.id, SPEC, 10, own)
    refused = timed.decide(account.id, SPEC, 10, own)
    assert isinstance(decided, Admission) and decided.admitted
    assert isinstance(refused, Admission) and refused.outcome == "rate_limited"
    assert store_samples(metrics) == (3, 0)

    def broken(*args: object) -> None:
        raise RuntimeError("the book is gone")

    monkeypatch.setattr(inner, "_core", SimpleNamespace(admit=broken))
    with pytest.raises(RuntimeError):
        timed.decide(account.id, SPEC, 10)
    assert store_samples(metrics) == (3, 1)
