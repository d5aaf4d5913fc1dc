"""An upstream that stalls after its `[DONE]` (the body's terminating chunk never comes) does
not hold a Responses stream, on either relay path: the provider's stream ends at its `[DONE]`
(gateway/providers/base.py, `ReframedStream.step`: `reframer.done` ends it, the connection is
not waited on), so `response.completed` is the stream's end. A drain that comes then finds
nothing open, and the stream is billed 200 and kept as the client saw it (issue 19zzg: why
31376f2's early leave from the drain's set loses nothing)."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.integration.test_responses_shutdown import draining_gateway, typed_events
from tests.live_bound import wait_exit


@pytest.mark.parametrize(
    ("path", "store", "cache"),
    [("stepped", True, None), ("generator", False, "refresh")],
)
def test_a_stall_after_done_is_not_waited_for_and_the_drain_finds_nothing_open(
    fake_openai: FakeOpenAI, tmp_path: Path, path: str, store: bool, cache: str | None
) -> None:
    """`stepped`: a stored stream (the provider's stream relayed stepped). `generator`: a
    cached one (an assembling stream over the provider's: relayed by the generator). Both
    end, billed 200, while the upstream still holds its body open; the SIGTERM after that
    drains nothing and the worker exits cleanly."""
    gateway = draining_gateway(fake_openai, tmp_path, "\n[cache]\nenabled = true\n")
    key = gateway.new_key(credits_usd=10.0)
    stalls_ended = fake_openai.stalls_ended
    headers = {"authorization": f"Bearer {key}"} | ({"x-klawd-cache": cache} if cache else {})
    try:
        with httpx.stream(
            "POST",
            f"{gateway.base_url}/v1/responses",
            headers=headers,
            json={"model": "openai/done-stall-fake", "input": "x", "stream": True, "store": store},
            timeout=30,
        ) as response:
            answer = b"".join(response.iter_raw())  # ends with the stream, upstream still held
        assert fake_openai.stalls_ended == stalls_ended, "the upstream's body ended first"
        gateway.process.send_signal(signal.SIGTERM)
        assert wait_exit(gateway.process, 30) == 0, "ended cleanly, not killed"
    finally:
        fake_openai.release()
    events = typed_events(answer)
    assert events[-1]["type"] == "response.completed", answer[-300:]
    with sqlite3.connect(tmp_path / "klawd.db") as db:
        billed = db.execute(
            "SELECT status FROM usage_ledger WHERE model = 'openai/done-stall-fake'"
        ).fetchall()
        kept = db.execute("SELECT count(*) FROM responses").fetchone()
    assert billed == [(200,)]
    if store:
        assert kept == (1,)
