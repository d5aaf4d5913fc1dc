"""SIGTERM: stop listening at once, let the open stream finish (or end it just before the drain
deadline), flush the ledger, exit 0."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import Gateway, children, free_port, gateway_config, start_gateway
from tests.fakes.openai_upstream import FakeOpenAI
from tests.live_bound import running_deadline, wait_exit


@contextlib.contextmanager
def paused_stream(gateway: Gateway) -> Iterator[Iterator[bytes]]:
    """A stream from the fake's pause-fake model: its first event, then silence until the fake
    is released; yields the raw reads."""
    key = gateway.new_key(credits_usd=10.0)
    body = {"model": "openai/pause-fake", "messages": [{"role": "user", "content": "x"}]}
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={**body, "stream": True},
        timeout=30,
    ) as response:
        yield response.iter_raw()


def test_sigterm_drains_open_streams_and_loses_no_usage(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "klawd.toml"
    gateway_config(config, port, fake_openai.base_url)
    gateway = start_gateway(config, port)
    with paused_stream(gateway) as reads:
        assert next(reads).startswith(b"data: {")
        gateway.process.send_signal(signal.SIGTERM)
        with pytest.raises(httpx.ConnectError):  # not ready, no new requests
            for _ in range(50):
                httpx.get(f"{gateway.base_url}/readyz", timeout=1)
                threading.Event().wait(0.05)
        fake_openai.release()
        rest = b"".join(reads)
    assert rest.endswith(b"data: [DONE]\n\n"), "the open stream finished"
    assert wait_exit(gateway.process, 30) == 0
    with sqlite3.connect(tmp_path / "klawd.db") as db:
        row = db.execute(
            "SELECT status, prompt_tokens, completion_tokens FROM usage_ledger"
            " WHERE model = 'openai/pause-fake'"
        ).fetchone()
    assert row == (200, 12, 4)


def gateway_with_short_grace(fake_openai: FakeOpenAI, tmp_path: Path) -> Gateway:
    """A gateway whose drain ends open streams a second after the stop (drain_grace_s = 2)."""
    port = free_port()
    config = tmp_path / "klawd.toml"
    gateway_config(config, port, fake_openai.base_url)
    config.write_text(
        config.read_text().replace("keepalive_s = 1\n", "keepalive_s = 1\ndrain_grace_s = 2\n", 1)
    )
    return start_gateway(config, port)


def test_a_stream_still_open_at_the_drain_deadline_is_ended_billed_and_told_why(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """drain_grace_s = 2: the upstream never finishes; shortly before the worker would be
    killed, the stream gets a final 503 event, the ledger gets its entry, and the gateway exits
    cleanly instead of being killed."""
    gateway = gateway_with_short_grace(fake_openai, tmp_path)
    try:
        with paused_stream(gateway) as reads:
            assert next(reads).startswith(b"data: {")
            gateway.process.send_signal(signal.SIGTERM)
            rest = b"".join(reads)  # ends when the gateway ends the stream
        assert wait_exit(gateway.process, 30) == 0, "ended cleanly, not killed"
    finally:
        fake_openai.release()
    events = [e for e in rest.split(b"\n\n") if e.startswith(b"data: ")]
    last = orjson.loads(events[-1][len(b"data: ") :])
    assert last["error"]["type"] == "service_unavailable"
    assert "restarting" in last["error"]["message"]
    assert b"[DONE]" not in rest
    with sqlite3.connect(tmp_path / "klawd.db") as db:
        row = db.execute(
            "SELECT status, prompt_tokens FROM usage_ledger WHERE model = 'openai/pause-fake'"
        ).fetchone()
    assert row is not None and row[0] == 503 and row[1] > 0


def test_a_worker_whose_supervisor_was_killed_drains_and_stops(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """The supervising process SIGKILLed (nothing passes a signal on): its worker, orphaned,
    would serve on and hold the port. It notices, ends its open stream at the drain deadline
    (billed, told why), flushes the ledger and exits; the port is free again."""
    gateway = gateway_with_short_grace(fake_openai, tmp_path)
    try:
        with paused_stream(gateway) as reads:
            assert next(reads).startswith(b"data: {")
            (worker,) = children(gateway.process.pid)
            made = _temporary_dirs(worker)
            assert made and all(directory.is_dir() for directory in made)
            gateway.process.kill()
            wait_exit(gateway.process, 10)
            rest = b"".join(reads)  # ends when the orphaned worker ends the stream
        passed = running_deadline(30)
        while Path(f"/proc/{worker}").exists() and _state(worker) != "Z":
            assert not passed(), "the orphaned worker kept running"
            time.sleep(0.1)
    finally:
        fake_openai.release()
        with contextlib.suppress(ProcessLookupError, NameError):
            os.kill(worker, signal.SIGKILL)
    events = [e for e in rest.split(b"\n\n") if e.startswith(b"data: ")]
    last = orjson.loads(events[-1][len(b"data: ") :])
    assert last["error"]["type"] == "service_unavailable"
    with pytest.raises(httpx.ConnectError):  # nobody listens on the port any more
        httpx.get(f"{gateway.base_url}/readyz", timeout=1)
    with sqlite3.connect(tmp_path / "klawd.db") as db:
        row = db.execute(
            "SELECT status FROM usage_ledger WHERE model = 'openai/pause-fake'"
        ).fetchone()
    assert row == (503,)
    log = (tmp_path / "gateway.log").read_text()
    assert "the supervising process (PID" in log and "is gone" in log
    left = [directory for directory in made if directory.exists()]
    assert not left, "the supervisor's temporary directories were left behind"


def _temporary_dirs(pid: int) -> list[Path]:
    """The directories `klawd serve` made for its workers (the drain file's, the metrics
    files'), read from the worker's environment."""
    environ = dict(
        entry.split(b"=", 1)
        for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if b"=" in entry
    )
    drain = Path(environ[b"KLAWD_DRAIN_FILE"].decode()).parent
    metrics = Path(environ[b"PROMETHEUS_MULTIPROC_DIR"].decode())
    return [drain, metrics]


def _state(pid: int) -> str:
    """The process's state letter ("Z": a zombie, exited and not yet reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"
