"""gateway/drain.py: the deadline, and the watcher that ends open streams at it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway.drain import (
    DRAIN_DIR_PREFIX,
    DRAIN_FILE_ENV,
    DRAIN_MARGIN_S,
    METRICS_DIR_PREFIX,
    SHUTDOWN_FLOOR_S,
    OpenStreams,
    announce,
    drain_deadline,
    is_drain,
    kill_expected_at,
    kill_timeout_s,
    remove_leftovers,
    shutdown_budget_s,
    writes_wait_s,
)
from tests.live_bound import within


def test_the_deadline_keeps_a_margin_before_the_kill() -> None:
    assert drain_deadline(100.0, 30.0) == 100.0 + 30.0 - DRAIN_MARGIN_S
    assert drain_deadline(100.0, 1.0) == 100.5, "at most half of a short grace"
    assert drain_deadline(100.0, 0.0) == 100.0


def test_the_watcher_ends_open_streams_once_the_supervisor_announced_the_drain(
    tmp_path: Path,
) -> None:
    from gateway import drain

    async def main() -> tuple[bool, bool]:
        streams = OpenStreams()
        stream = asyncio.ensure_future(asyncio.Event().wait())
        streams.add(stream)  # type: ignore[arg-type]
        signal_file = tmp_path / "signalled"
        watcher = asyncio.ensure_future(drain.watch(streams, 0.2, signal_file))
        await asyncio.sleep(0.3)
        untouched = not stream.done()  # nothing announced yet
        announce(signal_file, time.time())
        try:
            await within(stream, 5)
        except asyncio.CancelledError as exc:
            ended_by_drain = is_drain(exc)
        else:
            ended_by_drain = False
        watcher.cancel()
        return untouched, ended_by_drain

    untouched, ended_by_drain = asyncio.run(main())
    assert untouched
    assert ended_by_drain


def _serve_dirs(tmp_path: Path, metrics_name: str) -> tuple[Path, Path]:
    drain_dir = tmp_path / f"{DRAIN_DIR_PREFIX}x1"
    drain_dir.mkdir()
    (drain_dir / "signalled").write_text("1.0")
    metrics = tmp_path / metrics_name
    metrics.mkdir()
    for pid in (101, 102):
        for kind in ("counter", "histogram", "gauge_livesum"):
            (metrics / f"{kind}_{pid}.db").write_bytes(b"x")
    return drain_dir, metrics


def test_the_last_orphaned_worker_out_removes_the_serves_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drain_dir, metrics = _serve_dirs(tmp_path, f"{METRICS_DIR_PREFIX}x1")
    monkeypatch.setenv(DRAIN_FILE_ENV, str(drain_dir / "signalled"))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics))
    remove_leftovers(101)
    assert sorted(p.name for p in metrics.iterdir()) == [
        "counter_102.db",
        "gauge_livesum_102.db",
        "histogram_102.db",
    ]
    assert (drain_dir / "signalled").exists(), "another worker still runs"
    remove_leftovers(102)
    assert not metrics.exists() and not drain_dir.exists()


def test_a_metrics_directory_the_operator_named_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drain_dir, metrics = _serve_dirs(tmp_path, "operators-metrics")
    monkeypatch.setenv(DRAIN_FILE_ENV, str(drain_dir / "signalled"))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics))
    remove_leftovers(101)
    assert sorted(p.name for p in metrics.iterdir())[0] == "counter_102.db"
    assert len(list(metrics.iterdir())) == 3
    assert not drain_dir.exists()  # the other worker sees its parent gone without the file


def test_the_shutdown_s_budget_is_the_drain_s_margin_with_a_floor() -> None:
    assert (shutdown_budget_s(30.0), writes_wait_s(30.0)) == (DRAIN_MARGIN_S, DRAIN_MARGIN_S / 2)
    assert (shutdown_budget_s(1.0), writes_wait_s(1.0)) == (0.5, 0.25), "half a short grace"
    # No grace: open streams are ended at once, yet what is being written gets its floor
    # (the kill comes 1 s after the signal).
    assert (shutdown_budget_s(0.0), writes_wait_s(0.0)) == (SHUTDOWN_FLOOR_S, SHUTDOWN_FLOOR_S / 2)


def test_the_kill_is_expected_the_kill_timeout_after_the_signal_once_signalled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert [kill_timeout_s(g) for g in (30, 1.2, 1, 0.5, 0)] == [30, 2, 1, 1, 1]
    signalled = tmp_path / "signalled"
    monkeypatch.delenv(DRAIN_FILE_ENV, raising=False)
    assert kill_expected_at(30) is None  # not under `klawd serve`
    monkeypatch.setenv(DRAIN_FILE_ENV, str(signalled))
    assert kill_expected_at(30) is None  # not signalled yet
    announce(signalled, 1000.0)
    assert kill_expected_at(30) == 1030.0
    assert kill_expected_at(0) == 1001.0
