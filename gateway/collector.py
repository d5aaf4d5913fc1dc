"""The cycle collector's young generation bounded by its size, not only by its count.

CPython starts a young collection when its count of tracked allocations, less the tracked
objects freed since, passes the first threshold. Objects of any generation count as freed, so
while streams end as fast as new ones open (a burst reopened as its streams end), the old
streams' objects freed offset the new ones' allocations: the count stays low while the young
generation holds every new stream's objects, and the collection that finally runs walks them
all (8.5 ms young and 6.9 ms middle collections of ~19,500 objects in a served burst, against
~1 ms otherwise: docs/decisions/0012, twenty-sixth pass). A check on the loop every
YOUNG_CHECK_S runs the collection CPython would once the young generation holds more than its
threshold's worth of objects, so no collection in a burst walks much more than that plus what
one period allocates.
"""

from __future__ import annotations

import asyncio
import gc

# Between two looks at the young generation's size (a list of its objects: ~8 ns an object,
# ~40 us at 5,000). What a period allocates bounds what a collection walks beyond the threshold:
# at 1,000 new streams a second, ~60 tracked objects each, about 3,000.
YOUNG_CHECK_S = 0.05


def collect_if_large(bound: int, middle_after: int) -> int | None:
    """If the young generation holds more than `bound` objects, the collection CPython's own
    trigger would run: the middle generation's once more than `middle_after` young ones ran
    since its last, else the young one. Which ran, or None. Nothing while the collector is off
    (gc.disable(): what turned it off keeps it off)."""
    if not gc.isenabled() or len(gc.get_objects(0)) <= bound:
        return None
    generation = 1 if gc.get_count()[1] > middle_after else 0
    gc.collect(generation)
    return generation


async def bound_young(thresholds: tuple[int, int, int], period_s: float = YOUNG_CHECK_S) -> None:
    """Every `period_s`, `collect_if_large` by the collector's first two thresholds."""
    while True:
        await asyncio.sleep(period_s)
        collect_if_large(thresholds[0], thresholds[1])
