"""gateway._core.Limiter from Python, with an injected clock."""

import math
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import _core

T0 = 1_764_115_000.0  # 2026-11-25 23:56:40 UTC
MIDNIGHT = 1_764_115_200.0  # 2026-11-26 00:00:00 UTC


def rpm(
    cap: float = 10.0, cost: float = 1.0, key: str = "rpm:a"
) -> tuple[str, float, float, float]:
    return (key, cap, cap / 60.0, cost)


def test_burst_of_capacity_is_admitted_then_denied_with_retry_after() -> None:
    lim = _core.Limiter()
    for i in range(10):
        d = lim.acquire([rpm()], [], T0)
        assert d.allowed
        assert d.retry_after_s == 0.0
        assert d.remaining == [9 - i]
    d = lim.acquire([rpm()], [], T0)
    assert not d.allowed
    assert d.retry_after_s == pytest.approx(6.0)  # one token at 10/60 per second
    assert d.remaining == [0]
    assert d.reset_s == [pytest.approx(60.0)]
    assert lim.acquire([rpm()], [], T0 + 6.0).allowed


def test_denial_consumes_nothing_from_any_limit() -> None:
    lim = _core.Limiter()
    quota = ("rpd:a", 100, 1)
    for _ in range(3):
        assert lim.acquire([rpm(cap=3)], [quota], T0).allowed
    before = lim.peek([rpm(cap=3, cost=0)], [("rpd:a", 100, 0)], T0)
    assert before.remaining == [0, 97]
    for _ in range(5):
        assert not lim.acquire([rpm(cap=3)], [quota], T0).allowed
    after = lim.peek([rpm(cap=3, cost=0)], [("rpd:a", 100, 0)], T0)
    assert after.remaining == before.remaining


def test_quota_denial_does_not_take_from_the_bucket() -> None:
    lim = _core.Limiter()
    assert lim.acquire([rpm()], [("rpd:a", 1, 1)], T0).allowed
    d = lim.acquire([rpm()], [("rpd:a", 1, 1)], T0)
    assert not d.allowed
    assert d.retry_after_s == pytest.approx(MIDNIGHT - T0)
    assert d.remaining == [9, 0]


def test_quota_resets_at_midnight_utc() -> None:
    lim = _core.Limiter()
    q = [("rpd:a", 2, 1)]
    assert lim.acquire([], q, MIDNIGHT - 1.0).allowed
    assert lim.acquire([], q, MIDNIGHT - 0.5).allowed
    d = lim.acquire([], q, MIDNIGHT - 0.25)
    assert not d.allowed
    assert d.reset_s == [pytest.approx(0.25)]
    d = lim.acquire([], q, MIDNIGHT)
    assert d.allowed
    assert d.remaining == [1]
    assert d.reset_s == [pytest.approx(86400.0)]


def test_peek_gives_the_acquire_answer_without_consuming() -> None:
    lim = _core.Limiter()
    for _ in range(10):
        p = lim.peek([rpm()], [], T0)
        assert p.allowed
        assert p.remaining == [9]
    a = lim.acquire([rpm()], [], T0)
    assert (a.allowed, a.remaining) == (True, [9])


def test_charge_into_debt_blocks_until_repaid() -> None:
    lim = _core.Limiter()
    tpm = ("tpm:a", 1000.0, 1000.0 / 60.0, 0.0)
    assert lim.acquire([tpm], [], T0).allowed
    lim.charge("tpm:a", 1000.0, 1000.0 / 60.0, 1600.0, T0)
    d = lim.acquire([tpm], [], T0)
    assert not d.allowed
    assert d.remaining == [0]
    assert d.retry_after_s == pytest.approx(36.0)  # 600 tokens of debt at 1000/60 per second
    assert not lim.acquire([tpm], [], T0 + 35.9).allowed
    assert lim.acquire([tpm], [], T0 + 36.0).allowed


def test_impossible_cost_has_infinite_retry_after() -> None:
    lim = _core.Limiter()
    assert math.isinf(lim.acquire([rpm(cap=5, cost=6)], [], T0).retry_after_s)
    assert math.isinf(lim.acquire([], [("rpd:a", 5, 6)], T0).retry_after_s)


@pytest.mark.parametrize(
    ("buckets", "now"),
    [
        ([("k", math.nan, 1.0, 1.0)], T0),
        ([("k", 1.0, -1.0, 1.0)], T0),
        ([("k", 1.0, 1.0, math.inf)], T0),
        ([], math.nan),
    ],
)
def test_invalid_numbers_raise_value_error(
    buckets: list[tuple[str, float, float, float]], now: float
) -> None:
    with pytest.raises(ValueError, match="must be"):
        _core.Limiter().acquire(buckets, [], now)


def test_negative_quota_limit_is_rejected() -> None:
    with pytest.raises(OverflowError):
        _core.Limiter().acquire([], [("q", -1, 1)], T0)


def test_len_counts_keys_and_max_keys_bounds_memory() -> None:
    lim = _core.Limiter(max_keys=100)
    for i in range(1000):
        lim.acquire([rpm(key=f"b{i}")], [(f"q{i}", 10, 1)], T0)
        assert len(lim) <= 100
    assert len(lim) >= 90


def test_eviction_of_refilled_buckets_keeps_answers_exact() -> None:
    small = _core.Limiter(max_keys=10)
    big = _core.Limiter()
    now = T0
    for i in range(200):
        key = f"k{i % 40}"
        now += 0.5
        args = ([(key, 3.0, 1.0, 1.0)], [])
        a, b = small.acquire(*args, now), big.acquire(*args, now)
        assert (a.allowed, a.remaining) == (b.allowed, b.remaining)
    assert len(small) <= 10


@settings(max_examples=50, deadline=None, database=None)
@given(
    ops=st.lists(st.tuples(st.floats(0.0, 5.0), st.floats(0.0, 4.0), st.booleans()), max_size=40)
)
def test_admitted_cost_never_exceeds_capacity_plus_refill(
    ops: list[tuple[float, float, bool]],
) -> None:
    lim = _core.Limiter()
    cap, rate = 5.0, 0.5
    now, admitted = T0, 0.0
    for dt, cost, do_peek in ops:
        now += dt
        before = lim.peek([("k", cap, rate, cost)], [], now)
        if do_peek:
            continue
        d = lim.acquire([("k", cap, rate, cost)], [], now)
        assert d.allowed == before.allowed
        if d.allowed:
            admitted += cost
        assert admitted <= cap + rate * (now - T0) + 1e-9


def test_concurrent_acquires_admit_exactly_the_capacity() -> None:
    lim = _core.Limiter()
    admitted = [0] * 8

    def worker(slot: int) -> None:
        for _ in range(500):
            if lim.acquire([("shared", 1000.0, 0.0, 1.0)], [("day", 10**9, 1)], T0).allowed:
                admitted[slot] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sum(admitted) == 1000
    assert lim.peek([], [("day", 10**9, 0)], T0).remaining == [10**9 - 1000]


def test_token_due_now_is_granted_despite_timestamp_rounding() -> None:
    # 600/min drained at a real unix time: 0.1 s later float math gives a level of 0.99999905.
    lim = _core.Limiter()
    t0 = 1_764_115_000.123
    bucket = ("rpm:b", 600.0, 10.0, 600.0)
    assert lim.acquire([bucket], [], t0).allowed
    d = lim.acquire([("rpm:b", 600.0, 10.0, 1.0)], [], t0 + 0.1)
    assert d.allowed
    assert d.remaining == [0]
    assert not lim.acquire([("rpm:b", 600.0, 10.0, 1.0)], [], t0 + 0.1).allowed
