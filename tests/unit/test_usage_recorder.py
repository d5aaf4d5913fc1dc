"""The usage recorder's batches: one per period, whatever the store's round trip."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.store.base import UsageEntry
from gateway.usage import UsageRecorder


def entry(n: int) -> UsageEntry:
    return UsageEntry(
        id=f"use_recorder_{n}",
        ts=time.time(),
        day="2026-12-05",
        account_id="acct_recorder",
        key_id="",
        model="openai/gpt-fake",
        provider="openai",
        prompt_tokens=12,
        completion_tokens=4,
        images=0,
        cost_micros=10,
        reserved_micros=0,
        latency_ms=3,
        status=200,
        request_id=f"req_{n}",
        stream=False,
    )


class HeldStore:
    """A store whose settlements wait until released: entries recorded meanwhile are those a
    real store's round trip would see arrive."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()

    async def settle(self, entries: list[UsageEntry]) -> dict[str, Any]:
        self.batches.append([e.id for e in entries])
        await self.release.wait()
        return {}


async def settled_batches(store: HeldStore, count: int) -> None:
    for _ in range(500):  # bounded: 5 s
        if len(store.batches) >= count:
            return
        await asyncio.sleep(0.01)
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
