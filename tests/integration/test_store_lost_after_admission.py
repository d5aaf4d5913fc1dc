"""The Redis store lost while an admitted request's upstream call runs: the official `openai`
SDK against `klawd serve` on a redis-server of the test's own, stopped after the upstream got
the request and before it answers. The admission was decided, the answer comes and is settled
(billed); a store call after it (charging an account's `tokens_per_minute` for the answer's
tokens) must not turn that answer into an error."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import Gateway, free_port, gateway_config, start_gateway, stop
from tests.fakes.openai_upstream import FakeOpenAI
from tests.redis_server import RedisServer

PAUSED = """
[[models]]
id = "openai/answer-pause-fake"
provider = "openai"
upstream_model = "answer-pause-fake"
context_length = 8192
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
"""
BOUND_S = 20  # each wait's (the fake holds an answer 30 s at most)


@pytest.fixture
def redis_alone(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server this test may stop (not the suite's)."""
    server = RedisServer(free_port(), tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gateway_on_redis(
    tmp_path: Path, fake_openai: FakeOpenAI, redis_alone: RedisServer
) -> Iterator[Gateway]:
    config = tmp_path / "klawd.toml"
    port = free_port()
    gateway_config(config, port, fake_openai.base_url, extra=PAUSED, store_url=redis_alone.url)
    running = start_gateway(config, port)
    try:
        yield running
    finally:
        stop(running.process)


def until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {BOUND_S} s: {what}"
        time.sleep(0.02)


def test_an_answer_whose_token_charge_finds_the_store_gone_is_still_served(
    gateway_on_redis: Gateway, fake_openai: FakeOpenAI, redis_alone: RedisServer
) -> None:
    """Before, the answer was settled (200 in the ledger, the credit charged) and the client
    then got 503 `service_unavailable` from the token charge's StoreError, with no rate
    headers: billed for an answer it never saw."""
    key = gateway_on_redis.new_key(limits={"tokens_per_minute": 100_000})
    client = openai.OpenAI(
        base_url=f"{gateway_on_redis.base_url}/v1", api_key=key, max_retries=0, timeout=BOUND_S
    )
    marker = f"lost-{time.monotonic_ns()}"
    outcome: list[Any] = []

    def ask() -> None:
        try:
            outcome.append(
                client.chat.completions.with_raw_response.create(
                    model="openai/answer-pause-fake",
                    messages=[{"role": "user", "content": "hi"}],
                    user=marker,
                )
            )
        except Exception as exc:
            outcome.append(exc)

    asking = threading.Thread(target=ask)
    asking.start()
    try:
        # admitted (nothing goes upstream before the admission's reply), then Redis is gone
        until(
            lambda: any(r["body"].get("user") == marker for r in fake_openai.requests),
            "the upstream got the request",
        )
        redis_alone.stop()
    finally:
        fake_openai.release()
        asking.join(BOUND_S)
    (answer,) = outcome
    assert not isinstance(answer, Exception), answer
    assert answer.http_response.status_code == 200
    completion = answer.parse()
    assert completion.choices[0].message.content == "Hello from the fake"
    headers = answer.http_response.headers
    assert headers["x-ratelimit-limit-requests"]
    assert headers["x-ratelimit-remaining-requests"]
    assert headers["x-klawd-cost-usd"]
    log = (gateway_on_redis.config.parent / "gateway.log").read_text(errors="replace")
    assert "not charged to the token limit" in log


def test_a_stream_whose_token_charge_finds_the_store_gone_ends_whole(
    gateway_on_redis: Gateway, fake_openai: FakeOpenAI, redis_alone: RedisServer
) -> None:
    """The same for a stream: its first event out, Redis stopped, the rest released; the
    stream ends with its last chunk and nothing after it fails."""
    key = gateway_on_redis.new_key(limits={"tokens_per_minute": 100_000})
    client = openai.OpenAI(
        base_url=f"{gateway_on_redis.base_url}/v1", api_key=key, max_retries=0, timeout=BOUND_S
    )
    stream = client.chat.completions.create(
        model="openai/pause-fake", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    try:
        first = next(iter(stream))
        assert first.choices[0].delta.role == "assistant"
        redis_alone.stop()
    finally:
        fake_openai.release()
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello from the fake"
    log_path = gateway_on_redis.config.parent / "gateway.log"
    until(lambda: "not charged to the token limit" in log_path.read_text(), "the line")
