"""SIGTERM: stop listening at once, let the open stream finish, flush the ledger, exit 0."""

from __future__ import annotations

import signal
import sqlite3
import threading
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, gateway_config, start_gateway
from tests.fakes.openai_upstream import FakeOpenAI


def test_sigterm_drains_open_streams_and_loses_no_usage(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "klawd.toml"
    gateway_config(config, port, fake_openai.base_url)
    gateway = start_gateway(config, port)
    key = gateway.new_key(credits_usd=10.0)
    body = {"model": "openai/pause-fake", "messages": [{"role": "user", "content": "x"}]}
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={**body, "stream": True},
        timeout=30,
    ) as response:
        reads = response.iter_raw()
        assert next(reads).startswith(b"data: {")
        gateway.process.send_signal(signal.SIGTERM)
        with pytest.raises(httpx.ConnectError):  # not ready, no new requests
            for _ in range(50):
                httpx.get(f"{gateway.base_url}/readyz", timeout=1)
                threading.Event().wait(0.05)
        fake_openai.release()
        rest = b"".join(reads)
    assert rest.endswith(b"data: [DONE]\n\n"), "the open stream finished"
    assert gateway.process.wait(timeout=30) == 0
    with sqlite3.connect(tmp_path / "klawd.db") as db:
        row = db.execute(
            "SELECT status, prompt_tokens, completion_tokens FROM usage_ledger"
            " WHERE model = 'openai/pause-fake'"
        ).fetchone()
    assert row == (200, 12, 4)
