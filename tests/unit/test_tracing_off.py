"""Traces off (the default) cost nothing: the OpenTelemetry SDK is not even imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.settings import ConfigError, TelemetrySettings, load_settings
from gateway.tracing import build_tracing, traceparent

PROBE = """
import sys
from gateway.app import create_app
from gateway.settings import load_settings
create_app(load_settings(None, {}), {})
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""


def test_an_app_without_otlp_endpoint_never_imports_the_sdk() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def test_no_endpoint_means_no_tracing() -> None:
    assert build_tracing(TelemetrySettings()) is None


def test_traceparent_is_the_w3c_format() -> None:
    assert traceparent(1, 2, True) == f"00-{1:032x}-{2:016x}-01"
    assert traceparent(0xABC, 0xDEF, False).endswith("-00")


def test_an_endpoint_that_is_not_http_is_refused_at_boot(tmp_path: Path) -> None:
    config = tmp_path / "klawd.toml"
    config.write_text('[telemetry]\notlp_endpoint = "collector:4318"\n')
    with pytest.raises(ConfigError, match=r"telemetry\.otlp_endpoint"):
        load_settings(config, {})
