"""A Responses stream still open at a shutdown's drain deadline ends with numbered `error` and
`response.failed` events (as any failure after the first byte), and is billed."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.conftest import Gateway, free_port, gateway_config, start_gateway
from tests.fakes.openai_upstream import FakeOpenAI
from tests.live_bound import wait_exit


def draining_gateway(fake_openai: FakeOpenAI, tmp_path: Path, extra: str = "") -> Gateway:
    """A gateway of the test's own (its SIGTERM ends it), with a 2 s drain grace."""
    port = free_port()
    config = tmp_path / "klawd.toml"
    gateway_config(config, port, fake_openai.base_url)
    config.write_text(
        config.read_text().replace("keepalive_s = 1\n", "keepalive_s = 1\ndrain_grace_s = 2\n", 1)
        + extra
    )
    return start_gateway(config, port)


def typed_events(body: bytes) -> list[dict[str, Any]]:
    """The data of each `event:` event of a Responses stream's body."""
    return [
        orjson.loads(e.split(b"\ndata: ", 1)[1])
        for e in body.split(b"\n\n")
        if e.startswith(b"event: ")
    ]


def test_a_responses_stream_ended_by_the_drain_gets_numbered_final_events(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    gateway = draining_gateway(fake_openai, tmp_path)
    key = gateway.new_key(credits_usd=10.0)
    try:
        with httpx.stream(
            "POST",
            f"{gateway.base_url}/v1/responses",
            headers={"authorization": f"Bearer {key}"},
            json={"model": "openai/pause-fake", "input": "x", "stream": True},
            timeout=30,
        ) as response:
            reads = response.iter_raw()
            first = next(reads)
            assert first.startswith(b"event: response.created")
            gateway.process.send_signal(signal.SIGTERM)
            rest = first + b"".join(reads)  # ends when the gateway ends the stream
        assert wait_exit(gateway.process, 30) == 0, "ended cleanly, not killed"
    finally:
        fake_openai.release()
    events = typed_events(rest)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2]["code"] == "service_unavailable"
    assert events[-1]["response"]["status"] == "failed"
    with sqlite3.connect(tmp_path / "klawd.db") as db:
        row = db.execute(
            "SELECT status FROM usage_ledger WHERE model = 'openai/pause-fake'"
        ).fetchone()
    assert row is not None and row[0] == 503
