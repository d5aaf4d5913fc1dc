"""The usage recorder says when its writes fail and when they succeed again."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway import usage
from gateway.auth import AuthContext
from gateway.errors import LedgerUnwritable
from gateway.metering import AccountCache, Meter
from gateway.settings import load_settings
from gateway.store.base import StoreError, UsageEntry, open_store
from gateway.usage import UsageRecorder
from tests.live_bound import within
from tests.usage_entries import usage_entry


class FlakyStore:
    """Refuses the first `failures` settlements, then takes every entry."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.settled: list[UsageEntry] = []
        self.resent: list[bool] = []  # each call's flag

    async def settle(self, entries: list[UsageEntry], resent: bool = False) -> dict[str, Any]:
        self.resent.append(resent)
        if self.failures:
            self.failures -= 1
            raise StoreError("database or disk is full")
        self.settled += entries
        return {}


def entry(n: int) -> UsageEntry:
    return usage_entry(
        id=f"use_backlog_{n}",
        account_id="acct",
        model="m",
        provider="p",
        prompt_tokens=1,
        completion_tokens=1,
        latency_ms=1,
        request_id="",
    )


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

    reported, failing, store = asyncio.run(within(main(), 10))
    assert reported == [5, 5, 5, 0]
    assert failing[0] is None and failing[1] is not None and failing[2] is None
    assert [e.id for e in store.settled] == [f"use_backlog_{n}" for n in range(5)]
    # a batch sent after a failure may have been settled by it: its grants asked for anyway
    assert store.resent[:4] == [False, True, True, True]


def test_past_the_bound_of_unsettled_entries_requests_are_refused_until_a_write_succeeds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A store that refuses the ledger's writes while it still answers admissions (a full
    disk): once a failed flush leaves MAX_UNSETTLED entries, new requests get 503 (not served
    with nothing to bill them by, not kept in memory without end); after a write succeeds they
    are admitted again."""
    monkeypatch.setattr(usage, "MAX_UNSETTLED", 3)

    async def main() -> tuple[list[str], int]:
        store = open_store(f"sqlite:///{tmp_path}/m.db")
        account = await store.create_account("t", "free", 0)
        flaky = FlakyStore(failures=4)
        recorder = UsageRecorder(flaky, flush_interval_s=0.01)  # type: ignore[arg-type]
        recorder.start()
        meter = Meter(load_settings(None), AccountCache(store), store.limiter(), recorder)
        auth = AuthContext("key_1", account.id, None)
        outcomes: list[str] = []
        try:
            for _ in range(3):
                recorder.record(entry(len(outcomes)))
                outcomes.append("recorded")
            while not recorder.overflowing:
                await asyncio.sleep(0.005)
            with pytest.raises(LedgerUnwritable) as refused:
                await meter.admit(auth, "req", "m", [], lambda _: 0)
            outcomes.append(f"{refused.value.status} {refused.value.type}")
            while recorder.overflowing:
                await asyncio.sleep(0.005)
            await meter.admit(auth, "req", "m", [], lambda _: 0)
            outcomes.append("admitted")
            await recorder.close()
        finally:
            await store.close()
        return outcomes, len(flaky.settled)

    outcomes, settled = asyncio.run(within(main(), 20))
    assert outcomes == ["recorded"] * 3 + ["503 service_unavailable", "admitted"]
    assert settled == 3
