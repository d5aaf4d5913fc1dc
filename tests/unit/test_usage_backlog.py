"""The usage recorder says when its writes fail and when they succeed again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.store.base import StoreError, UsageEntry
from gateway.usage import UsageRecorder


class FlakyStore:
    """Refuses the first `failures` settlements, then takes every entry."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.settled: list[UsageEntry] = []

    async def settle(self, entries: list[UsageEntry]) -> dict[str, Any]:
        if self.failures:
            self.failures -= 1
            raise StoreError("database or disk is full")
        self.settled += entries
        return {}


def entry(n: int) -> UsageEntry:
    return UsageEntry(
        f"use_backlog_{n}", time.time(), "2026-12-05", "acct", "", "m", "p",
        1, 1, 0, 10, 0, 1, 200, "", False, 0, "",
    )  # fmt: skip


def test_failed_flushes_report_the_entries_kept_then_zero_once_written() -> None:
    async def main() -> tuple[list[int], list[float | None], FlakyStore]:
        store = FlakyStore(failures=3)
        reported: list[int] = []
        recorder = UsageRecorder(store, flush_interval_s=0.01, on_backlog=reported.append)  # type: ignore[arg-type]
        failing: list[float | None] = [recorder.failing_since]
        recorder.start()
        for n in range(5):
            recorder.record(entry(n))
        while recorder.failing_since is None:
            await asyncio.sleep(0.005)
        failing.append(recorder.failing_since)
        while recorder.pending:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        failing.append(recorder.failing_since)
        await recorder.close()
        return reported, failing, store

    reported, failing, store = asyncio.run(asyncio.wait_for(main(), 10))
    assert reported == [5, 5, 5, 0]
    assert failing[0] is None and failing[1] is not None and failing[2] is None
    assert [e.id for e in store.settled] == [f"use_backlog_{n}" for n in range(5)]
