"""The usage recorder's batches: one per period, whatever the store's round trip."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest

from gateway.store.base import UsageEntry
from gateway.usage import UsageRecorder
from tests.live_bound import polls_async, within
from tests.usage_entries import usage_entry

BOUND_S = 30  # a polling wait's hang guard, in running time (never a timing assertion)


def entry(n: int) -> UsageEntry:
    return usage_entry(id=f"use_recorder_{n}", account_id="acct_recorder", request_id=f"req_{n}")


class HeldStore:
    """A store whose settlements wait until released: entries recorded meanwhile are those a
    real store's round trip would see arrive."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()

    async def settle(self, entries: list[UsageEntry], resent: bool = False) -> dict[str, Any]:
        self.batches.append([e.id for e in entries])
        await self.release.wait()
        return {}


async def settled_batches(store: HeldStore, count: int) -> None:
    async for _ in polls_async(BOUND_S, 0.01):
        if len(store.batches) >= count:
            return
    raise AssertionError(f"{count} batches expected, {len(store.batches)} settled")


async def test_entries_recorded_during_a_settlement_wait_for_the_next_period() -> None:
    store = HeldStore()
    recorder = UsageRecorder(store, flush_interval_s=0.01)  # type: ignore[arg-type]
    recorder.start()
    recorder.record(entry(1))
    await settled_batches(store, 1)
    recorder._flush_interval_s = 3600.0  # the next period: not within this test
    recorder.record(entry(2))
    recorder.record(entry(3))
    store.release.set()
    for _ in range(20):
        await asyncio.sleep(0.005)
    assert store.batches == [["use_recorder_1"]]  # not settled right after the first batch
    assert recorder.pending == 2
    await recorder.close()  # the rest is settled on the way out
    assert store.batches == [["use_recorder_1"], ["use_recorder_2", "use_recorder_3"]]
    assert recorder.pending == 0


async def test_a_full_batch_is_settled_without_waiting_for_the_period() -> None:
    store = HeldStore()
    recorder = UsageRecorder(store, flush_interval_s=0.01, max_batch=2)  # type: ignore[arg-type]
    recorder.start()
    recorder.record(entry(1))
    await settled_batches(store, 1)
    recorder._flush_interval_s = 3600.0
    for n in (2, 3, 4):
        recorder.record(entry(n))
    store.release.set()
    await settled_batches(store, 2)
    assert store.batches[1] == ["use_recorder_2", "use_recorder_3"]
    await recorder.close()
    assert store.batches[2:] == [["use_recorder_4"]]


async def test_a_flush_that_never_returns_is_cut_and_its_entries_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A store that never answers (`release` never set): the shutdown's flush ends at its
    bound, and what it held is in the log, counted and summed, each entry replayable. Before,
    `close` waited for the store for ever."""
    caplog.set_level(logging.ERROR, logger="klawd.usage")
    store = HeldStore()
    recorder = UsageRecorder(store, flush_interval_s=0.01)  # type: ignore[arg-type]
    recorder.start()
    recorder.record(entry(1))
    await settled_batches(store, 1)  # the background task waits in the store
    recorder.record(entry(2))
    await within(recorder.close(within_s=0.05), 10)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == (
        "usage flush unfinished after 0.05 s at shutdown: 1 entries of 1 accounts not settled "
        "(10 micro-dollars), and 1 sent to the store unanswered (10 micro-dollars: settled if "
        "it answers late), written to the log"
    )
    assert [
        orjson.loads(line.removeprefix("unsettled usage entry "))["id"] for line in lines[1:]
    ] == [
        "use_recorder_1",
        "use_recorder_2",
    ]
    assert recorder.pending == 0


async def test_a_flush_that_ends_within_its_bound_settles_everything(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="klawd.usage")
    store = HeldStore()
    recorder = UsageRecorder(store, flush_interval_s=0.01)  # type: ignore[arg-type]
    recorder.start()
    recorder.record(entry(1))
    await settled_batches(store, 1)
    recorder.record(entry(2))
    asyncio.get_running_loop().call_later(0.01, store.release.set)
    await recorder.close(within_s=5.0)
    assert store.batches == [["use_recorder_1"], ["use_recorder_2"]]
    assert recorder.pending == 0
    assert caplog.records == []


async def test_a_batch_the_store_answers_after_the_cut_is_counted_apart_and_said_settled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The batch in the store at the cut is logged (it may never be settled), but apart from
    the entries never sent, and once the store answers it after all a line says so: before,
    the cut's line counted it as not settled, and the answer came unseen (a hand sum of the
    cut's micro-dollars counted it twice; the replay skips it)."""
    caplog.set_level(logging.WARNING, logger="klawd.usage")
    store = HeldStore()
    recorder = UsageRecorder(store, flush_interval_s=0.01)  # type: ignore[arg-type]
    recorder.start()
    recorder.record(entry(1))
    await settled_batches(store, 1)  # entry 1 is in the store, unanswered
    recorder.record(entry(2))
    recorder.record(entry(3))
    await within(recorder.close(within_s=0.05), 10)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].endswith(
        ": 2 entries of 1 accounts not settled (20 micro-dollars), and 1 sent to the store "
        "unanswered (10 micro-dollars: settled if it answers late), written to the log"
    )
    assert len(lines) == 4  # the line, then each entry's
    store.release.set()  # the store answers, late
    async for _ in polls_async(BOUND_S, 0.01):
        if len(caplog.records) > 4:
            break
    assert [r.getMessage() for r in caplog.records[4:]] == [
        "usage entries sent to the store before the shutdown's cut were settled after all: "
        "1 entries (10 micro-dollars), ids use_recorder_1"
    ]
    assert store.batches == [["use_recorder_1"]]


async def test_an_entry_recorded_after_the_close_is_logged_for_the_replay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A request that ends once the shutdown's flush is done (the lifespan's shutdown has
    begun): nothing will settle its entry, so it goes to the log as a cut flush's do. Before,
    it was kept in memory and lost with the process, without a word."""
    caplog.set_level(logging.ERROR, logger="klawd.usage")
    store = HeldStore()
    store.release.set()
    recorder = UsageRecorder(store, flush_interval_s=0.01)  # type: ignore[arg-type]
    recorder.start()
    await recorder.close(within_s=5.0)
    recorder.record(entry(1))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == (
        "usage entry recorded after the ledger's last flush at shutdown: not settled "
        "(10 micro-dollars), written to the log"
    )
    assert [
        orjson.loads(line.removeprefix("unsettled usage entry "))["id"] for line in lines[1:]
    ] == ["use_recorder_1"]
    assert recorder.pending == 0
    assert store.batches == []


async def test_a_batch_the_store_answers_after_the_cut_runs_the_after_settle_checks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The checks that follow a settled batch (the keys' budgets, the accounts' credit: their
    `budget.threshold` events) run for a batch the store settles after the shutdown's cut too.
    Before, they ran only in the flush the cut had stopped: an account that crossed its budget
    in that batch never had its event."""
    caplog.set_level(logging.WARNING, logger="klawd.usage")
    store = HeldStore()
    checked: list[tuple[list[str], dict[str, Any]]] = []

    async def check(batch: list[UsageEntry], grants: dict[str, Any]) -> None:
        checked.append(([e.id for e in batch], grants))

    recorder = UsageRecorder(store, flush_interval_s=0.01, after_settle=(check,))  # type: ignore[arg-type]
    recorder.start()
    recorder.record(entry(1))
    await settled_batches(store, 1)  # entry 1 is in the store, unanswered
    await within(recorder.close(within_s=0.05), 10)
    assert checked == []
    store.release.set()  # the store answers, late
    async for _ in polls_async(BOUND_S, 0.01):
        if checked:
            break
    assert checked == [(["use_recorder_1"], {})]


async def test_the_checks_of_a_batch_settled_before_the_cut_run_to_their_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The store answered within the flush's share, its checks had not ended at the cut:
    they go on (the batch is settled, and nothing logs it). Before, the cut cancelled them
    with the flush: a budget crossed in that batch was never announced, without a word."""
    caplog.set_level(logging.WARNING, logger="klawd.usage")
    store = HeldStore()
    store.release.set()  # the store answers at once
    checking, release = asyncio.Event(), asyncio.Event()
    checked: list[list[str]] = []

    async def check(batch: list[UsageEntry], grants: dict[str, Any]) -> None:
        checking.set()
        await release.wait()
        checked.append([e.id for e in batch])

    recorder = UsageRecorder(store, flush_interval_s=0.01, after_settle=(check,))  # type: ignore[arg-type]
    recorder.start()
    recorder.record(entry(1))
    await within(checking.wait(), 5)  # settled, its check under way
    await within(recorder.close(within_s=0.05), 10)
    assert caplog.records == []  # settled: nothing to replay
    release.set()
    async for _ in polls_async(BOUND_S, 0.01):
        if checked:
            break
    assert checked == [["use_recorder_1"]]
