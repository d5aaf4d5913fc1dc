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
"""

from __future__ import annotations

import bisect
from typing import Any

from prometheus_client import Counter, Gauge, Histogram


class MetricBuffer:
    def __init__(self) -> None:
        self._counters: dict[Counter | Gauge, float] = {}
        self._histograms: dict[Histogram, tuple[list[int], list[float]]] = {}

    def inc(self, child: Counter | Gauge, amount: float = 1.0) -> None:
        """`amount` may be negative for a gauge (its net change is added at the flush)."""
        self._counters[child] = self._counters.get(child, 0.0) + amount

    def observe(self, child: Histogram, value: float) -> None:
        pending = self._histograms.get(child)
        if pending is None:
            bounds: list[float] = child._upper_bounds
            pending = self._histograms[child] = ([0] * len(bounds), [0.0])
        bounds = child._upper_bounds
        pending[0][bisect.bisect_left(bounds, value)] += 1
        pending[1][0] += value

    def flush(self) -> None:
        counters, self._counters = self._counters, {}
        for counter, amount in counters.items():
            if amount:  # a gauge back where it was needs no write
                counter.inc(amount)
        histograms, self._histograms = self._histograms, {}
        for histogram, (counts, total) in histograms.items():
            values: list[Any] = histogram._buckets
            for index, count in enumerate(counts):
                if count:
                    values[index].inc(count)
            histogram._sum.inc(total[0])
