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
`pending(histogram)` hand out the running totals themselves, kept for the app's life and zeroed
at each flush: a list per set of counters, which a hook adds into with no call per update
(docs/decisions/0011, issue 19m); and per histogram child a `_core.PendingHistogram`
(rust_core/src/histogram.rs), whose `observe(value)` is one call for the bucket's search, its
count and the sum (`bisect_left` and two float additions in Python were ~1.9K instructions an
observation, three a request: decision 0011, issue 19zzzzd). What a request's end updates (its
HTTP request counter and histograms, its settlement's four counters) sits in one
`_core.RunningTotals` (rust_core/src/totals.rs): `counters`, `histogram` and `requests` hand out
its slots once per child, and the observer makes one call a request (`RunningTotals.end`:
decision 0011, issue 19zzzzi). The flush adds every total into its child as the lists' did.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from gateway._core import PendingHistogram, RunningTotals


class MetricBuffer:
    def __init__(self) -> None:
        self._counters: dict[Counter | Gauge, float] = {}
        self._histograms: dict[Histogram, PendingHistogram] = {}
        self._tallies: dict[tuple[Counter | Gauge, ...], list[float]] = {}
        self.totals = RunningTotals()
        # The children of the totals' slots, by slot; and each one's slot (its first, for a
        # tuple of counters).
        self._counted: list[Counter | Gauge] = []
        self._observed: list[Histogram] = []
        self._slots: dict[object, int] = {}

    def tally(self, children: tuple[Counter | Gauge, ...]) -> list[float]:
        """The running totals of these counters (or gauges), one per child in order: the caller
        adds into the list (`tally[i] += amount`), the flush adds each into its child and zeroes
        it. One list per distinct tuple of children (so the caller may ask again)."""
        totals = self._tallies.get(children)
        if totals is None:
            totals = self._tallies[children] = [0.0] * len(children)
        return totals

    def pending(self, child: Histogram) -> PendingHistogram:
        """This histogram child's pending observations, for the caller to observe into
        (`pending.observe(value)`, as the child's `observe` counts it)."""
        pending = self._histograms.get(child)
        if pending is None:
            pending = self._histograms[child] = PendingHistogram(child._upper_bounds)
        return pending

    def counters(self, children: tuple[Counter | Gauge, ...]) -> int:
        """The first slot of these counters' running totals in `totals` (the others follow it,
        in order): one set of slots per distinct tuple of children."""
        slot = self._slots.get(children)
        if slot is None:
            slot = self._slots[children] = self.totals.counters(len(children))
            self._counted.extend(children)
        return slot

    def histogram(self, child: Histogram) -> int:
        """This histogram child's slot in `totals`."""
        slot = self._slots.get(child)
        if slot is None:
            slot = self._slots[child] = self.totals.histogram(child._upper_bounds)
            self._observed.append(child)
        return slot

    def requests(self, counter: Counter, duration: Histogram, ttfb: Histogram) -> int:
        """The slot of an HTTP label set's request counter and histograms in `totals`, for
        `RunningTotals.end`."""
        key = ("requests", counter, duration, ttfb)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = self.totals.requests(
                self.counters((counter,)), self.histogram(duration), self.histogram(ttfb)
            )
        return slot

    def inc(self, child: Counter | Gauge, amount: float = 1.0) -> None:
        """`amount` may be negative for a gauge (its net change is added at the flush)."""
        self._counters[child] = self._counters.get(child, 0.0) + amount

    def observe(self, child: Histogram, value: float) -> None:
        (self._histograms.get(child) or self.pending(child)).observe(value)

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
        counted = self._counted
        for slot, amount in self.totals.take_counters():  # (only those not zero)
            counted[slot].inc(amount)
        # Taken and zeroed in place: the request path holds these objects (`pending`).
        for histogram, pending in self._histograms.items():
            taken = pending.take()
            if taken is not None:
                _add(histogram, *taken)
        observed = self._observed
        for slot, counts, total in self.totals.take_histograms():
            _add(observed[slot], counts, total)


def _add(histogram: Histogram, counts: list[int], total: float) -> None:
    """Observations' bucket counts and sum into the child's own values, as `observe` writes."""
    values: list[Any] = histogram._buckets
    for index, count in enumerate(counts):
        if count:
            values[index].inc(count)
    histogram._sum.inc(total)
