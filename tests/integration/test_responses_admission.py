"""`/v1/responses` takes the chat route's path: the plan's limits, credits, the ledger, fallbacks;
and its stored responses work on Redis as on the embedded store (a gateway process on a real
redis-server)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Gateway, free_port, gateway_config, start_gateway, stop
from tests.fakes.openai_upstream import ANSWER_WORDS, FakeOpenAI
from tests.integration.test_limits_and_billing import new_account, wait_for_ledger
from tests.redis_server import RedisServer


def respond(gateway: Gateway, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/v1/responses",
        headers={"authorization": f"Bearer {key}"},
        json=body,
        timeout=20,
    )


ECHO = {"model": "klawd/echo", "input": "hi"}


def test_the_plans_request_limit_counts_responses(gateway: Gateway) -> None:
    _, key = new_account(gateway, plan="free")
    answers = [respond(gateway, key, ECHO) for _ in range(11)]
    assert [a.status_code for a in answers] == [200] * 10 + [429]
    assert answers[0].headers["x-ratelimit-limit-requests"] == "10"
    assert answers[0].headers["x-ratelimit-remaining-requests"] == "9"
    assert answers[-1].json()["error"]["type"] == "rate_limit_exceeded"
    assert int(answers[-1].headers["retry-after"]) >= 1


def test_a_response_is_billed_in_the_ledger_and_needs_credit(gateway: Gateway) -> None:
    _, key = new_account(gateway, plan="pro", credits_usd=1.0)
    answer = respond(gateway, key, {"model": "openai/gpt-fake", "input": "hi"})
    assert answer.status_code == 200, answer.text
    cost = float(answer.headers["x-klawd-cost-usd"])
    assert cost == pytest.approx((12 * 1.0 + 4 * 2.0) / 1e6)
    view = wait_for_ledger(gateway, key, 1)
    assert view["usage_today"]["prompt_tokens"] == 12
    assert view["usage_today"]["completion_tokens"] == 4
    assert view["credits_usd"] == pytest.approx(1.0 - cost)
    _, broke = new_account(gateway, plan="pro", credits_usd=0)
    refused = respond(gateway, broke, {"model": "openai/gpt-fake", "input": "hi"})
    assert refused.status_code == 402
    assert refused.json()["error"]["type"] == "insufficient_credits"


def test_a_failing_model_falls_back_as_on_chat(gateway: Gateway, api_key: str) -> None:
    answer = respond(gateway, api_key, {"model": "openai/fallback-chain", "input": "hi"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-klawd-model"] == "openai/gpt-fake"
    assert answer.json()["model"] == "openai/gpt-fake"


@pytest.fixture(scope="module")
def redis_gateway(
    fake_openai: FakeOpenAI, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("responses-redis")
    port = free_port()
    config = directory / "klawd.toml"
    gateway_config(config, port, fake_openai.base_url, store_url=redis_server.url)
    running = start_gateway(config, port)
    yield running
    stop(running.process)


def test_stored_responses_on_redis(redis_gateway: Gateway) -> None:
    key, other = redis_gateway.new_key(), redis_gateway.new_key()
    with (
        openai.OpenAI(base_url=f"{redis_gateway.base_url}/v1", api_key=key, max_retries=0) as sdk,
        openai.OpenAI(
            base_url=f"{redis_gateway.base_url}/v1", api_key=other, max_retries=0
        ) as theirs,
    ):
        first = sdk.responses.create(model="openai/gpt-fake", input="Say hello")
        with sdk.responses.stream(
            model="klawd/echo", input="one more", previous_response_id=first.id
        ) as stream:
            second = stream.get_final_response()
        assert second.output_text == "one more"
        assert sdk.responses.retrieve(second.id).previous_response_id == first.id
        items = sdk.responses.input_items.list(second.id)
        assert [i.content[0].text for i in items.data] == ["one more"]  # type: ignore[union-attr]
        assert sdk.responses.retrieve(first.id).output_text == "".join(ANSWER_WORDS)
        with pytest.raises(openai.NotFoundError):
            theirs.responses.retrieve(first.id)
        sdk.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            sdk.responses.retrieve(first.id)
