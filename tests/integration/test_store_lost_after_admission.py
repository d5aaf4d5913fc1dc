"""The Redis store lost while an admitted request's upstream call runs: the official `openai`
SDK against `klawd serve` on a redis-server of the test's own, stopped after the upstream got
the request and before it answers. The admission was decided, the answer comes and is settled
(billed); a store call after it (charging an account's `tokens_per_minute` for the answer's
tokens) must not turn that answer into an error, and the tokens it could not charge count once
the store is back (gateway/token_charges.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from tests.conftest import PERSISTED, Gateway, free_port, gateway_config, start_gateway, stop
from tests.fakes.openai_upstream import FakeOpenAI
from tests.live_bound import polls
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
KEPT = "kept, to be charged to the token limit when the store answers again"


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
    for _ in polls(BOUND_S, 0.02):
        if condition():
            return
    raise AssertionError(f"not within {BOUND_S} s of running time: {what}")


def answered_while_the_store_stops(
    gateway: Gateway, fake_openai: FakeOpenAI, redis_alone: RedisServer, key: str
) -> Any:
    """A non-streamed answer whose upstream call began with the store up and ended with it
    stopped: the raw response."""
    client = openai.OpenAI(
        base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0, timeout=BOUND_S
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
    return answer


def test_an_answer_whose_token_charge_finds_the_store_gone_is_still_served(
    gateway_on_redis: Gateway, fake_openai: FakeOpenAI, redis_alone: RedisServer
) -> None:
    """Before, the answer was settled (200 in the ledger, the credit charged) and the client
    then got 503 `service_unavailable` from the token charge's StoreError, with no rate
    headers: billed for an answer it never saw."""
    key = gateway_on_redis.new_key(limits={"tokens_per_minute": 100_000})
    answer = answered_while_the_store_stops(gateway_on_redis, fake_openai, redis_alone, key)
    assert answer.http_response.status_code == 200
    completion = answer.parse()
    assert completion.choices[0].message.content == "Hello from the fake"
    headers = answer.http_response.headers
    assert headers["x-ratelimit-limit-requests"]
    assert headers["x-ratelimit-remaining-requests"]
    assert headers["x-klawd-cost-usd"]
    log = (gateway_on_redis.config.parent / "gateway.log").read_text(errors="replace")
    assert KEPT in log  # (the charge was never sent: the store was gone)


def test_tokens_the_store_could_not_be_charged_count_once_it_answers_again(
    gateway_on_redis: Gateway, fake_openai: FakeOpenAI, redis_alone: RedisServer
) -> None:
    """An account of 10 tokens a minute, a 16-token answer whose charge finds the store
    stopped: kept by the worker, charged once the store is back (its first settled batch),
    once, so the account's next request is refused (429) as it would have been without the
    outage. Before, the tokens were forgotten and the next request was served."""
    tpm, used = 10, 16  # (the fake's answer: 12 prompt + 4 completion tokens)
    key = gateway_on_redis.new_key(limits={"tokens_per_minute": tpm})
    answer = answered_while_the_store_stops(gateway_on_redis, fake_openai, redis_alone, key)
    assert answer.http_response.status_code == 200
    log_path = gateway_on_redis.config.parent / "gateway.log"
    assert KEPT in log_path.read_text(errors="replace")
    redis_alone.start(*PERSISTED)
    until(
        lambda: (
            "while it failed their charges charged to the token limits of 1 accounts"
            in log_path.read_text(errors="replace")
        ),
        "the kept tokens charged",
    )
    store = redis.Redis(port=redis_alone.port)
    try:
        (bucket,) = store.keys("*:tpm")
        level = float(store.hget(bucket, "level") or "nan")
    finally:
        store.close()
    # in debt by the answer's tokens, less what a bucket refills while the store was away: once
    assert tpm - used - 0.5 <= level < 0, level
    with httpx.Client(base_url=gateway_on_redis.base_url, timeout=BOUND_S) as client:
        refused = client.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "openai/gpt-fake", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["type"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1


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
    until(lambda: KEPT in log_path.read_text(), "the line")
