"""The usage recorder: ledger entries are queued on the hot path and written in batches.

`record()` never blocks and never awaits (it is called from `finally` blocks of cancelled
streams). A background task writes batches with `Store.settle`, retrying with backoff while the
store is down; `close()` flushes everything before the store closes, so a clean shutdown loses
nothing. If the store stays unreachable at shutdown, the entries are written to the log as JSON
lines so that an operator can replay them (`klawd usage replay`, gateway/cli_usage.py; `UsageEntry`
ids make a replay idempotent).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec

from gateway.store.base import CreditGrant, Store, UsageEntry

log = logging.getLogger("klawd.usage")

# Ledger entries kept unwritten past which new requests are refused (~15-25 MB of entries).
MAX_UNSETTLED = 50_000

# Told of every settled batch and of the accounts' credit grants after it.
SettleHook = Callable[[list[UsageEntry], dict[str, CreditGrant]], Awaitable[None]]


class UsageRecorder:
    """`flush_interval_s`: how long entries gather before they are settled as one batch (the
    store's `settle_interval_s`: 50 ms on SQLite and on Redis). A batch is work that shares
    the worker's core with requests in flight: its fixed part is spread over more entries in a
    longer batch, and a much longer one delays requests (`python -m
    loadtests.bench.side_by_side --measures lat --seconds 3 --reps 3`: added latency p99 at
    1 connection 1.3 ms with 0.2 s batches, 0.9 ms with 20 ms ones, before SQLite's batch
    let go of the GIL per 64 rows instead of per row)."""

    def __init__(
        self,
        store: Store,
        flush_interval_s: float = 0.02,
        max_batch: int = 500,
        after_settle: Sequence[SettleHook] = (),
        on_backlog: Callable[[int], None] | None = None,
    ) -> None:
        self._store = store
        # Told of the entries kept after a failed flush, and of 0 once a flush succeeds again
        # (the unsettled-entries gauge); `failing_since` (loop time): the first failed flush
        # since the last one that succeeded (None: the last one succeeded), for /readyz.
        self._on_backlog = on_backlog
        self.failing_since: float | None = None
        # Set when a failed flush leaves MAX_UNSETTLED entries or more, until a flush succeeds:
        # new requests are refused meanwhile (Meter.start), rather than served with nothing to
        # bill them by while the entries grow the worker's memory.
        self.overflowing = False
        # Told of every settled batch (the budget thresholds of keys and of accounts' credit,
        # gateway/webhooks/budgets.py and credits.py); a hook's failure is logged, keeps no
        # other hook from running and never settles a batch twice.
        self._after_settle = tuple(after_settle)
        self._flush_interval_s = flush_interval_s
        self._max_batch = max_batch
        self._pending: list[UsageEntry] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        # The batch sent to the store and not answered yet, and its settlement: a shutdown's
        # cut stops waiting for it, not the settlement itself (a store that answers late may
        # still settle it, and says so: `_in_flight_settled`).
        self._in_flight: tuple[list[UsageEntry], asyncio.Future[dict[str, CreditGrant]]] | None = (
            None
        )
        # The after-settle checks running, and the entries of each (the loop holds tasks
        # weakly): the store's close waits for them (`settled_and_checked`).
        self._checks: dict[asyncio.Task[None], int] = {}

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="klawd-usage")

    def record(self, entry: UsageEntry) -> None:
        if self._closed:  # a request that ended after the shutdown's flush: nothing settles it
            self._write_late(entry)
            return
        self._pending.append(entry)
        if len(self._pending) >= self._max_batch:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def flush(self) -> None:
        while self._pending:
            await self._settle_batch()

    async def _settle_batch(self) -> None:
        """The entries pending now (up to `max_batch`). Those recorded while it is written wait
        for the next period (or for `max_batch` of them): settling them at once made the batches
        follow each other as fast as the store answered, each one round trip's worth of
        requests (under load several a period, a few entries each on streams)."""
        batch = self._pending[: self._max_batch]
        if not batch:
            return
        # After a failure the batch's head may have been settled by a call whose reply was
        # lost: `resent` gets its accounts' grants all the same (Store.settle)
        settling = asyncio.ensure_future(
            self._store.settle(batch, resent=self.failing_since is not None)
        )
        self._in_flight = (batch, settling)
        try:
            grants = await asyncio.shield(settling)
        finally:
            if settling.done():
                self._in_flight = None
        del self._pending[: len(batch)]
        if len(self._pending) >= self._max_batch:
            self._wake.set()
        if self._after_settle:
            # Shielded as the settlement: the batch is settled, and a shutdown's cut that
            # cancelled its checks would leave a crossing unannounced, with nothing logged.
            await asyncio.shield(self._checking(batch, grants))

    def _checking(
        self, batch: list[UsageEntry], grants: dict[str, CreditGrant]
    ) -> asyncio.Task[None]:
        task = asyncio.ensure_future(self._check(batch, grants))
        self._checks[task] = len(batch)
        task.add_done_callback(self._checks.pop)
        return task

    @property
    def checks_running(self) -> tuple[int, int]:
        """The after-settle checks running, and the entries they check."""
        return len(self._checks), sum(self._checks.values())

    async def settled_and_checked(self) -> None:
        """Waits for the batch a shutdown's cut left unanswered with the store (`close`), then
        for every after-settle check still running, that batch's included: the store's close
        must not come under them (a check that meets a closed store fails, and the
        `budget.threshold` event it would store is never stored). Unbounded: the caller
        bounds it."""
        while True:
            waits: set[asyncio.Future[Any]] = set(self._checks)
            if self._in_flight is not None and not self._in_flight[1].done():
                waits.add(self._in_flight[1])  # (its answer starts its checks: `_write_out`)
            if not waits:
                return
            await asyncio.wait(waits)

    async def _check(self, batch: list[UsageEntry], grants: dict[str, CreditGrant]) -> None:
        for hook in self._after_settle:
            try:
                await hook(batch, grants)
            except Exception:
                log.exception("after-settle check failed for %d entries", len(batch))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = self._flush_interval_s
        while not self._closing:
            # A timer that sets the event, not asyncio.wait_for (a task, a future and a
            # cancellation per period: 50 times a second).
            timer = loop.call_later(backoff, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()
            self._wake.clear()
            try:
                if self.failing_since is None:
                    await self._settle_batch()
                else:  # every kept entry written before the backlog is reported gone
                    await self.flush()
                backoff = self._flush_interval_s
                self.overflowing = False
                if self.failing_since is not None:
                    self.failing_since = None
                    log.info("usage flush succeeded again: the kept entries are settled")
                    if self._on_backlog is not None:
                        self._on_backlog(0)
            except Exception:
                log.exception("usage flush failed; %d entries kept for retry", len(self._pending))
                backoff = min(5.0, backoff * 2)
                if self.failing_since is None:
                    self.failing_since = loop.time()
                if len(self._pending) >= MAX_UNSETTLED and not self.overflowing:
                    self.overflowing = True
                    log.error(
                        "%d usage entries kept unsettled: new requests are refused (503) until "
                        "the store takes them",
                        len(self._pending),
                    )
                if self._on_backlog is not None:
                    self._on_backlog(len(self._pending))

    async def close(self, within_s: float | None = None) -> None:
        """The rest settled, within `within_s` (None: no bound) from now: a store that never
        answers must not hold the worker's shutdown until its kill, after which the entries
        would be lost without a word. What a failed or cut flush leaves is written to the log
        (`unsettled usage entry` lines, for `klawd usage replay`: an entry settled after all,
        by a store that answered late, is skipped by the replay)."""
        self._closing = True
        self._wake.set()
        bound = asyncio.timeout(None if within_s is None else max(0.0, within_s))
        try:
            async with bound:
                if self._task is not None:
                    # Waited for, not awaited: cancelled with every task at the end of an
                    # event loop (asyncio.run), it must not cancel the flush and the rest of
                    # the app's shutdown with it.
                    await asyncio.wait([self._task])
                await self.flush()
        except Exception:
            if bound.expired():
                self._write_out(f"usage flush unfinished after {within_s:.2f} s at shutdown")
            else:
                log.exception("usage flush failed at shutdown")
                self._write_out("usage flush failed at shutdown")
        finally:
            self._closed = True
            if self._task is not None:
                self._task.cancel()  # (cut, it still waits for the store)

    def _write_out(self, why: str) -> None:
        """The entries still pending, in the log: one line of what they add up to (no key, no
        body), then one line each. The batch the store has not answered yet is counted apart:
        the store may still settle it (then a line says so), and a hand sum of the first
        count must not count it twice."""
        pending = self._pending
        if not pending:
            return
        sent: list[UsageEntry] = []
        if self._in_flight is not None:
            sent, settling = self._in_flight
            settling.add_done_callback(lambda done: self._in_flight_settled(sent, done))
        unsent = pending[len(sent) :]
        what = (
            f"{why}: {len(unsent)} entries of {len({entry.account_id for entry in unsent})} "
            f"accounts not settled ({sum(entry.cost_micros for entry in unsent)} micro-dollars)"
        )
        if sent:
            what += (
                f", and {len(sent)} sent to the store unanswered "
                f"({sum(entry.cost_micros for entry in sent)} micro-dollars: settled if it "
                "answers late)"
            )
        log.error("%s, written to the log", what)
        for entry in pending:
            log.error("unsettled usage entry %s", msgspec.json.encode(entry).decode())
        pending.clear()

    def _in_flight_settled(
        self, sent: list[UsageEntry], settling: asyncio.Future[dict[str, CreditGrant]]
    ) -> None:
        """The store answered the batch a shutdown's cut had logged as unanswered: settled
        after all (the replay skips their lines, and the after-settle checks run now: the
        store's grants are known only from this answer), or not (their lines are to be
        replayed)."""
        if settling.cancelled() or settling.exception() is not None:
            return
        log.warning(
            "usage entries sent to the store before the shutdown's cut were settled after all: "
            "%d entries (%d micro-dollars), ids %s",
            len(sent),
            sum(entry.cost_micros for entry in sent),
            " ".join(entry.id for entry in sent),
        )
        if self._after_settle:
            self._checking(sent, settling.result())

    def _write_late(self, entry: UsageEntry) -> None:
        log.error(
            "usage entry recorded after the ledger's last flush at shutdown: not settled "
            "(%d micro-dollars), written to the log",
            entry.cost_micros,
        )
        log.error("unsettled usage entry %s", msgspec.json.encode(entry).decode())
