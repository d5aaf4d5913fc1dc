"""The app's start-up freezes the collector's view of what it built and raises its thresholds
(gateway/app.py, GC_THRESHOLDS); its shutdown undoes both, for a process that outlives the app."""

from __future__ import annotations

import gc
from pathlib import Path

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
