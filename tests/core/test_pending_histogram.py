"""gateway._core.PendingHistogram from Python: a histogram child's observations as prometheus-
client's `Histogram.observe` counts them (the bucket by `bisect_left`, the sum by float `+=`)."""

import math
from bisect import bisect_left

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import _core

BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, math.inf]


@given(st.lists(st.floats(min_value=0.0, max_value=1e6) | st.sampled_from(BOUNDS), max_size=50))
def test_counts_and_sum_are_bisect_left_and_float_addition(values: list[float]) -> None:
    pending = _core.PendingHistogram(BOUNDS)
    counts, total = [0] * len(BOUNDS), 0.0
    for value in values:
        pending.observe(value)
        counts[bisect_left(BOUNDS, value)] += 1
        total += value
    taken = pending.take()
    if not values:
        assert taken is None
    else:
        assert taken == (counts, total)  # the sum to the bit: added in the same order
    assert pending.take() is None  # zeroed


def test_a_value_on_a_bound_counts_in_that_bound_s_bucket() -> None:
    pending = _core.PendingHistogram([0.1, 1.0, math.inf])
    pending.observe(0.1)
    pending.observe(1.0000001)
    assert pending.take() == ([1, 0, 1], 0.1 + 1.0000001)


def test_a_histogram_without_buckets_is_refused() -> None:
    with pytest.raises(ValueError, match="buckets"):
        _core.PendingHistogram([])
