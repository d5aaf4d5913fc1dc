"""Counter and histogram updates of the hot path, buffered in plain dicts and flushed once a second.

In multiprocess mode every prometheus-client update is a locked write into an mmap file with a
pid check (a system call): about 15 of them per chat request cost 10-15% of a worker's CPU
(docs/benchmarks.md). Here an update is a dictionary addition; `flush()` (from a once-a-second
task of the app, before this worker answers /metrics, and at shutdown) adds the totals into the
collectors, one write per label set and bucket. A scrape therefore sees other workers' values
up to a second late, as a scrape interval already does.

Histograms are flushed bucket by bucket into the child's own values (`_buckets`, `_sum`), the
layout prometheus-client's `Histogram.observe` writes; tests/unit/test_metrics_and_request_log.py
checks that a flushed histogram reads exactly as one observed directly.

The request path's own hooks (gateway/observer.py) go one step further: `tally(children)` and
`pending(histogram)` hand out the running totals themselves (a list per set of counters, the
bucket counts and sum per histogram child), kept for the app's life and zeroed in place at each
flush, so that a hook adds into them with no call per update (docs/decisions/0011, issue 19m).
"""

from __future__ import annotations

import bisect
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

# A histogram child's pending observations: (its upper bounds, the count per bucket, [sum]).
Pending = tuple[list[float], list[int], list[float]]


class MetricBuffer:
    def __init__(self) -> None:
        self._counters: dict[Counter | Gauge, float] = {}
        self._histograms: dict[Histogram, Pending] = {}
        self._tallies: dict[tuple[Counter | Gauge, ...], list[float]] = {}

    def tally(self, children: tuple[Counter | Gauge, ...]) -> list[float]:
        """The running totals of these counters (or gauges), one per child in order: the caller
        adds into the list (`tally[i] += amount`), the flush adds each into its child and zeroes
        it. One list per distinct tuple of children (so the caller may ask again)."""
        totals = self._tallies.get(children)
        if totals is None:
            totals = self._tallies[children] = [0.0] * len(children)
        return totals

    def pending(self, child: Histogram) -> Pending:
        """This histogram child's pending observations, for the caller to add into:
        `counts[bisect_left(bounds, value)] += 1; total[0] += value` is one `observe`."""
        pending = self._histograms.get(child)
        if pending is None:
            bounds: list[float] = child._upper_bounds
            pending = self._histograms[child] = (bounds, [0] * len(bounds), [0.0])
        return pending

    def inc(self, child: Counter | Gauge, amount: float = 1.0) -> None:
        """`amount` may be negative for a gauge (its net change is added at the flush)."""
        self._counters[child] = self._counters.get(child, 0.0) + amount

    def observe(self, child: Histogram, value: float) -> None:
        pending = self._histograms.get(child)
        if pending is None:
            pending = self.pending(child)
        bounds, counts, total = pending
        counts[bisect.bisect_left(bounds, value)] += 1
        total[0] += value

    def flush(self) -> None:
        counters, self._counters = self._counters, {}
        for counter, amount in counters.items():
            if amount:  # a gauge back where it was needs no write
                counter.inc(amount)
        for children, totals in self._tallies.items():
            for index, amount in enumerate(totals):
                if amount:
                    children[index].inc(amount)
                    totals[index] = 0.0
        # Zeroed in place, not replaced: the request path holds these lists (`pending`).
        for histogram, (_, counts, total) in self._histograms.items():
            if not any(counts):
                continue
            values: list[Any] = histogram._buckets
            for index, count in enumerate(counts):
                if count:
                    values[index].inc(count)
                    counts[index] = 0
            histogram._sum.inc(total[0])
            total[0] = 0.0
