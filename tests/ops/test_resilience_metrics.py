"""Retries, fallbacks and circuit state in /metrics (a gateway of its own: circuits are state)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Gateway, free_port, gateway_config, start_gateway, stop
from tests.fakes.openai_upstream import FakeOpenAI
from tests.live_bound import running_deadline
from tests.scrape import Samples, scrape, total


@pytest.fixture(scope="module")
def own_gateway(
    fake_openai: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    directory: Path = tmp_path_factory.mktemp("resilience-metrics")
    port = free_port()
    gateway_config(directory / "klawd.toml", port, fake_openai.base_url)
    gateway = start_gateway(directory / "klawd.toml", port)
    yield gateway
    stop(gateway.process)


def post(gateway: Gateway, key: str, model: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    body["user"] = f"flaky-{uuid.uuid4()}"
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json=body,
        timeout=20,
    )
    return response.status_code


def samples(gateway: Gateway) -> Samples:
    return scrape(f"{gateway.base_url}/metrics")[1]


def test_retries_of_a_flaky_upstream_are_counted(own_gateway: Gateway) -> None:
    key = own_gateway.new_key()
    before = total(samples(own_gateway), "klawd_upstream_retries_total", provider="openai")
    assert post(own_gateway, key, "openai/flaky") == 200  # two 503s, then the answer
    after = total(samples(own_gateway), "klawd_upstream_retries_total", provider="openai")
    assert after - before == 2


def test_a_fallback_to_the_next_target_is_counted(own_gateway: Gateway) -> None:
    key = own_gateway.new_key()
    before = total(samples(own_gateway), "klawd_fallbacks_total", provider="openai")
    assert post(own_gateway, key, "openai/fallback-chain") == 200
    after = total(samples(own_gateway), "klawd_fallbacks_total", provider="openai")
    assert after - before == 1


def test_an_open_circuit_shows_as_state_2_of_its_provider(own_gateway: Gateway) -> None:
    key = own_gateway.new_key()
    assert total(samples(own_gateway), "klawd_circuit_state", provider="openai") == 0
    for _ in range(6):  # each request counts once: enough failures to open the circuit
        post(own_gateway, key, "openai/fail-500")
    passed = running_deadline(5)  # the gauge is refreshed once a second
    while total(samples(own_gateway), "klawd_circuit_state", provider="openai") != 2:
        assert not passed(), "the circuit gauge never showed the open circuit"
        time.sleep(0.1)
