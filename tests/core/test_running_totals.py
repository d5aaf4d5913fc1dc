"""gateway._core.RunningTotals from Python: the request path's counters and histograms by slot,
added as float `+=` and `PendingHistogram` add them, and the log line's milliseconds rounded
as `RequestRecord.entry` rounds them."""

import math
from bisect import bisect_left

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import _core

BOUNDS = [0.005, 0.1, 1.0, 10.0, math.inf]
TIMES = st.floats(min_value=0.0, max_value=1e6) | st.integers(0, 10**9).map(lambda n: n / 2e6)


@given(st.lists(st.tuples(TIMES, st.none() | TIMES), max_size=30))
def test_ends_count_observe_and_round_as_the_python_did(
    ends: list[tuple[float, float | None]],
) -> None:
    totals = _core.RunningTotals()
    counter = totals.counters(1)
    duration, ttfb = totals.histogram(BOUNDS), totals.histogram(BOUNDS)
    requests = totals.requests(counter, duration, ttfb)
    counts = {duration: [0] * len(BOUNDS), ttfb: [0] * len(BOUNDS)}
    sums = {duration: 0.0, ttfb: 0.0}
    for duration_s, ttfb_s in ends:
        latency_ms, ttfb_ms = totals.end(requests, duration_s, ttfb_s, -1, 0, 0, 0.0)
        # RequestRecord.entry's rounding of what http_finished handed it
        assert latency_ms == round(duration_s * 1000 * 1000) / 1000
        assert ttfb_ms == (None if ttfb_s is None else round(ttfb_s * 1000 * 1000) / 1000)
        for slot, value in ((duration, duration_s), (ttfb, ttfb_s)):
            if value is not None:
                counts[slot][bisect_left(BOUNDS, value)] += 1
                sums[slot] += value
    assert totals.take_counters() == ([(counter, float(len(ends)))] if ends else [])
    expected = [(slot, counts[slot], sums[slot]) for slot in (duration, ttfb) if any(counts[slot])]
    assert totals.take_histograms() == expected
    assert totals.take_counters() == [] and totals.take_histograms() == []  # zeroed


@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**9))))
def test_settlements_add_as_float_additions_in_order(settled: list[tuple[int, int, int]]) -> None:
    totals = _core.RunningTotals()
    base = totals.counters(4)
    expected = [0.0] * 4
    for prompt, completion, micros in settled:
        cost_usd = micros / 1_000_000
        totals.settle(base, prompt, completion, cost_usd)
        for index, amount in enumerate((1.0, prompt, completion, cost_usd)):
            expected[index] += amount
    assert totals.take_counters() == [(base + i, v) for i, v in enumerate(expected) if v]


def test_a_slot_not_given_out_raises_and_adds_nothing() -> None:
    totals = _core.RunningTotals()
    requests = totals.requests(
        totals.counters(1), totals.histogram(BOUNDS), totals.histogram(BOUNDS)
    )
    base = totals.counters(4)
    with pytest.raises(IndexError):
        totals.end(requests, 0.5, 0.1, base + 1, 1, 1, 1.0)  # its four counters overrun
    with pytest.raises(IndexError):
        totals.end(requests + 1, 0.5, 0.1, -1, 0, 0, 0.0)
    with pytest.raises(IndexError):
        totals.add(5, 1.0)
    with pytest.raises(ValueError):
        totals.histogram([])
    assert totals.take_counters() == [] and totals.take_histograms() == []
