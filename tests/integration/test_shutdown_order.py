"""The worker's shutdown, in the order an operator reads it afterwards: the ledger and the
store (`AppState.close`), then the metrics' last flush and the worker's exit from the live
gauges (`worker_exited`), and only then the request log's and the span exporter's closes,
which wait on streams and a child process that the shutdown does not control."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

import gateway.app
from gateway.app import create_app
from gateway.metrics_buffer import MetricBuffer
from gateway.requestlog import RequestLog
from gateway.settings import load_settings
from gateway.tracing.otel import Tracing


def test_the_last_metrics_and_the_exit_come_before_the_log_s_and_the_exporter_s_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill during the request log's close (10 s on a stream that stops taking lines) or the
    exporter's (15 s on a child that stops reading) came before the last metrics and the
    worker's exit from the live gauges: those were lost with it."""
    steps: list[str] = []
    flush, close_log, close_exporter = MetricBuffer.flush, RequestLog.close, Tracing.close

    def flushed(self: MetricBuffer) -> None:
        flush(self)
        steps.append("metrics flushed")

    def log_closed(self: RequestLog, *args: float) -> bool | None:
        steps.append("request log closed")
        return close_log(self, *args)

    def exporter_closed(self: Tracing, *args: float) -> None:
        steps.append("exporter closed")
        close_exporter(self, *args)

    monkeypatch.setattr(MetricBuffer, "flush", flushed)
    monkeypatch.setattr(RequestLog, "close", log_closed)
    monkeypatch.setattr(Tracing, "close", exporter_closed)
    monkeypatch.setattr(gateway.app, "worker_exited", lambda pid: steps.append("worker exited"))
    config = tmp_path / "klawd.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/order.db"\n\n'
        '[telemetry]\notlp_endpoint = "http://127.0.0.1:9"\n'
    )
    with TestClient(create_app(load_settings(config), environ={})):
        steps.clear()  # (no request: no span for the child to send to the closed port)
    assert steps == ["metrics flushed", "worker exited", "request log closed", "exporter closed"]
