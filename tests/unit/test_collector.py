"""The young generation bounded by its size (gateway/collector.py): while streams end as fast as
new ones open, the objects freed offset the count of those allocated, and CPython's own trigger
lets the young generation grow with every new stream's objects."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gateway.collector import collect_if_large


@pytest.fixture
def collector_quiet() -> Iterator[None]:
    """No automatic collection during a test (its thresholds out of reach), restored after."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.set_threshold(10**9, 10**9, 10**9)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


def old_objects(count: int) -> list[list[object]]:
    """`count` containers out of the young generation."""
    old: list[list[object]] = [[] for _ in range(count)]
    gc.collect()
    return old


def churn(old: list[list[object]]) -> list[list[object]]:
    """As many new containers as `old` holds, allocated while the old ones are freed: the count
    of the young generation stays low while it holds every new one."""
    new = []
    while old:
        old.pop()
        new.append([])
    return new


@pytest.mark.usefixtures("collector_quiet")
def test_a_young_generation_grown_while_objects_are_freed_is_collected() -> None:
    new = churn(old_objects(10_000))
    assert gc.get_count()[0] < 100  # CPython's trigger sees nothing to do
    assert len(gc.get_objects(0)) >= 10_000
    assert collect_if_large(2000, 10) == 0
    assert len(gc.get_objects(0)) < 100
    assert all(gc.is_tracked(item) for item in new[:10])  # kept: survivors, one generation up


@pytest.mark.usefixtures("collector_quiet")
def test_a_young_generation_within_its_bound_is_left_alone() -> None:
    gc.collect()
    kept = [[] for _ in range(100)]
    assert collect_if_large(2000, 10) is None
    assert len(gc.get_objects(0)) >= len(kept)


@pytest.mark.usefixtures("collector_quiet")
def test_the_middle_generation_is_collected_after_as_many_young_ones_as_cpython_waits() -> None:
    old = old_objects(10_000)
    for _ in range(3):
        gc.collect(0)
    new = churn(old)
    assert gc.get_count()[1] == 3
    assert collect_if_large(2000, 2) == 1
    assert gc.get_count()[1] == 0
    assert len(gc.get_objects(1)) < 100  # the survivors one generation further up
    assert new


@pytest.mark.usefixtures("collector_quiet")
def test_nothing_is_collected_while_the_collector_is_off() -> None:
    new = churn(old_objects(10_000))
    gc.disable()
    try:
        assert collect_if_large(2000, 10) is None
        assert len(gc.get_objects(0)) >= len(new)
    finally:
        gc.enable()
