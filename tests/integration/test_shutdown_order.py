"""The worker's shutdown, in the order an operator reads it afterwards: the ledger and the
store (`AppState.close`), then the metrics' last flush and the worker's exit from the live
gauges (`worker_exited`), and only then the request log's and the span exporter's closes,
which wait on streams and a child process that the shutdown does not control: within what is
left of the shutdown's budget (`drain.shutdown_budget_s`), each cut one said in one line."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from subprocess import Popen

import pytest
from starlette.testclient import TestClient

import gateway.app
from gateway.api.middleware import GatewayMiddleware
from gateway.app import create_app
from gateway.drain import DRAIN_FILE_ENV
from gateway.metrics_buffer import MetricBuffer
from gateway.requestlog import RequestLog
from gateway.settings import load_settings
from gateway.tracing import pipe
from gateway.tracing.otel import Tracing
from tests.unit.test_metrics_and_request_log import StuckStream
from tests.unit.test_span_pipe import stopped_child


def test_the_last_metrics_and_the_exit_come_before_the_log_s_and_the_exporter_s_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill during the request log's close (10 s on a stream that stops taking lines) or the
    exporter's (15 s on a child that stops reading) came before the last metrics and the
    worker's exit from the live gauges: those were lost with it."""
    steps: list[str] = []
    flush, close_log, close_exporter = MetricBuffer.flush, RequestLog.aclose, Tracing.close

    def flushed(self: MetricBuffer) -> None:
        flush(self)
        steps.append("metrics flushed")

    async def log_closed(self: RequestLog, *args: float) -> bool:
        steps.append("request log closed")
        return await close_log(self, *args)

    def exporter_closed(self: Tracing, *args: float) -> None:
        steps.append("exporter closed")
        close_exporter(self, *args)

    monkeypatch.setattr(MetricBuffer, "flush", flushed)
    monkeypatch.setattr(RequestLog, "aclose", log_closed)
    monkeypatch.setattr(Tracing, "close", exporter_closed)
    monkeypatch.setattr(gateway.app, "worker_exited", lambda pid: steps.append("worker exited"))
    config = traced_config(tmp_path, "order")
    with TestClient(create_app(load_settings(config), environ={})):
        steps.clear()  # (no request: no span for the child to send to the closed port)
    assert steps == ["metrics flushed", "worker exited", "request log closed", "exporter closed"]


def traced_config(tmp_path: Path, name: str) -> Path:
    """A config with the span exporter on (its child sends to a closed port), store `name`."""
    config = tmp_path / "klawd.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/{name}.db"\n\n'
        '[telemetry]\notlp_endpoint = "http://127.0.0.1:9"\n'
    )
    return config


def app_with_a_stopped_exporter(config: Path) -> tuple[GatewayMiddleware, Popen[bytes]]:
    """The app of `config` (traced_config's), its exporter's child stopped: it reads nothing."""
    app = create_app(load_settings(config), environ={})
    assert isinstance(app, GatewayMiddleware) and app.tracing is not None
    return app, stopped_child(app.tracing.pipe)


def test_a_request_log_stream_that_takes_nothing_is_left_at_the_budget_s_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The request log's close waited for its writer 10 s, past the shutdown's budget (1 s at
    the default grace), and said nothing of the lines it left. Now it waits for what is left
    of the budget and counts them; the writer, a daemon, goes on while the process lives."""
    caplog.set_level(logging.ERROR, logger="klawd")
    config = tmp_path / "klawd.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/log.db"\n')
    stream = StuckStream(wait_s=60)
    try:
        with TestClient(create_app(load_settings(config), environ={})) as client:
            request_log = client.app_state["klawd_observer"].request_log
            request_log._stream = stream
            assert client.get("/healthz").status_code == 200
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("shutdown: ")]
        assert len(lines) == 1, lines
        assert lines[0].startswith("shutdown: the request log not closed after ")
        assert lines[0].endswith(
            " s: 1 request line(s) not written yet, left to its writer until the process exits"
        )
    finally:
        stream.release.set()


def test_an_exporter_child_that_never_ends_is_left_at_the_budget_s_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The exporter's close waited 15 s for its child (then killed it), past the shutdown's
    budget, in a thread the interpreter's exit joins. Now the lifespan waits for what is left
    of the budget, and the close goes on in a daemon thread (the child, once its pipe is
    closed, sends what it read and ends: here it is stopped, and killed by the test)."""
    caplog.set_level(logging.ERROR, logger="klawd")
    app, child = app_with_a_stopped_exporter(traced_config(tmp_path, "spans"))
    try:
        with TestClient(app):
            pass
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("shutdown: ")]
        assert len(lines) == 1, lines
        assert lines[0].startswith("shutdown: the span exporter not closed after ")
        assert lines[0].endswith(
            " s: 0 span(s) not written to its child yet (0 bytes), left to the process's exit "
            "(the child sends what it read, then ends)"
        )
    finally:
        child.kill()
        child.wait()


def test_with_the_kill_far_away_the_exporter_s_close_keeps_its_own_bound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signalled by `klawd serve` with no stream open, the worker's kill is the grace (30 s)
    away: the exporter's close is not cut at the budget's 1 s but keeps its own bound
    (CHILD_EXIT_TIMEOUT_S, 2 s here), after which it kills a child that did not end. Before,
    it was cut at the budget's end and logged so, with the kill still 29 s away."""
    caplog.set_level(logging.ERROR, logger="klawd")
    monkeypatch.setattr(pipe, "CHILD_EXIT_TIMEOUT_S", 2.0)
    signalled = tmp_path / "signalled"
    signalled.write_text(repr(time.time()), encoding="ascii")
    monkeypatch.setenv(DRAIN_FILE_ENV, str(signalled))
    app, child = app_with_a_stopped_exporter(traced_config(tmp_path, "far"))
    try:
        with TestClient(app):
            pass
        assert [r.getMessage() for r in caplog.records if "shutdown: " in r.getMessage()] == []
        assert child.returncode is not None, "the close ended without its child's end"
    finally:
        if child.returncode is None:
            child.kill()
            child.wait()
