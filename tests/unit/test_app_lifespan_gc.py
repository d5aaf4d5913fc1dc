"""The app's start-up freezes the collector's view of what it built and raises its thresholds
(gateway/app.py, GC_THRESHOLDS); its shutdown undoes both, for a process that outlives the app."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from gateway.app import GC_THRESHOLDS, create_app
from gateway.settings import load_settings


def test_the_app_s_shutdown_undoes_what_its_start_up_did_to_the_collector(tmp_path: Path) -> None:
    """Before, a process that had run the app kept its heap frozen: frozen objects are not
    seen by gc.get_referrers, so Hypothesis, first imported after it (a subset run), warned
    that trio's module-level Random was held by nothing, and the run failed on the warning."""
    config = tmp_path / "klawd.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/gc.db"\n')
    kept = gc.get_threshold()
    gc.unfreeze()  # (from a known state, whatever ran before)
    gc.set_threshold(700, 10, 10)
    try:
        with TestClient(create_app(load_settings(config), environ={})) as client:
            assert client.get("/healthz").status_code == 200
            assert gc.get_threshold() == GC_THRESHOLDS
            assert gc.get_freeze_count() > 0
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.unfreeze()
        gc.set_threshold(*kept)


def _config(tmp_path: Path, name: str) -> Path:
    config = tmp_path / f"{name}.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/{name}.db"\n')
    return config


@pytest.mark.parametrize("order", ["in start order", "in reverse order"])
def test_two_apps_in_one_process_leave_the_collector_as_the_first_found_it(
    tmp_path: Path, order: str
) -> None:
    """The collector's freeze and thresholds are the process's, not an app's: while one app
    still runs they stay as its start-up set them, and the last app to stop restores what
    the first one found. Before, stopping in start order left GC_THRESHOLDS in place (the
    second app had found them and restored them), and either order unfroze the heap of the
    app still running."""
    kept = gc.get_threshold()
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    try:
        first = TestClient(create_app(load_settings(_config(tmp_path, "first")), environ={}))
        second = TestClient(create_app(load_settings(_config(tmp_path, "second")), environ={}))
        first.__enter__()
        second.__enter__()
        stopped, running = (first, second) if order == "in start order" else (second, first)
        stopped.__exit__(None, None, None)
        try:
            assert running.get("/healthz").status_code == 200
            assert gc.get_threshold() == GC_THRESHOLDS
            assert gc.get_freeze_count() > 0
        finally:
            running.__exit__(None, None, None)
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.unfreeze()
        gc.set_threshold(*kept)
