"""`[retry] deadline_s` end to end: a gateway of its own (deadline 1 s) in front of the suite's
fake OpenAI upstream, driven by httpx and the official openai SDK.

The fake answers by upstream model name (tests/fakes/openai_upstream.py): `hang-headers` holds
its headers back until the gateway lets go (the provider's own first-byte bound here is 10 s),
`fail-429` is a 429 with Retry-After: 7 (under `max_retry_after_s` = 30: without the deadline it
is waited for)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Gateway, free_port, gateway_config, start_gateway, stop
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.provider_config import PROVIDER_ENV
from tests.fakes.replicate_upstream import FakeReplicate
from tests.live_bound import polls
from tests.scrape import scrape, total

BOUND_S = 30  # a polling wait's hang guard, in running time (never a timing assertion)

MESSAGES: Any = [{"role": "user", "content": "hi"}]

# The fake OpenAI upstream behind a patient provider: `hang-headers` holds its headers back
# until the gateway lets go, past the deadline (which cuts the try) and within the provider's
# own bounds.
PATIENT = """
[providers.patient]
kind = "openai"
base_url = "{url}"
api_key_env = "OPENAI_API_KEY"
first_byte_timeout_s = 10
timeout_s = 20

[[models]]
id = "patient/hang-headers"
provider = "patient"
upstream_model = "hang-headers"
"""

PROVIDERS = (
    PATIENT
    + """
[[models]]
id = "patient/fail-429"
provider = "patient"
upstream_model = "fail-429"

[[models]]
id = "patient/hang-then-fallback"
provider = "patient"
upstream_model = "hang-headers"
fallbacks = ["openai/gpt-fake"]

[providers.replicate-slow]
kind = "replicate"
base_url = "{replicate_url}"
api_key_env = "REPLICATE_API_TOKEN"
timeout_s = 20

[[models]]
id = "replicate-slow/never"
provider = "replicate-slow"
upstream_model = "fake-owner/never"
kind = "image"
usd_per_image = 0.02
capabilities = ["images"]
"""
)


def with_deadline(config: Path, deadline_s: float, max_retry_after_s: int = 5) -> None:
    """`[retry] deadline_s` (and `max_retry_after_s`) set in a test config (gateway_config's)."""
    text = config.read_text()
    assert "max_retry_after_s = 5\n" in text
    config.write_text(
        text.replace(
            "max_retry_after_s = 5\n",
            f"max_retry_after_s = {max_retry_after_s}\ndeadline_s = {deadline_s}\n",
        )
    )


@pytest.fixture(scope="module")
def gateway(
    fake_openai: FakeOpenAI, fake_replicate: FakeReplicate, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = tmp_path_factory.mktemp("deadline") / "klawd.toml"
    port = free_port()
    extra = PROVIDERS.format(url=fake_openai.base_url, replicate_url=fake_replicate.base_url)
    gateway_config(config, port, fake_openai.base_url, extra=extra)
    with_deadline(config, 1, max_retry_after_s=30)
    running = start_gateway(config, port, PROVIDER_ENV)
    yield running
    stop(running.process)


@pytest.fixture(scope="module")
def key(gateway: Gateway) -> str:
    return gateway.new_key(credits_usd=1000.0, limits={"requests_per_minute": 10_000})


def sent(fake: FakeOpenAI, upstream_model: str) -> int:
    return sum(1 for r in fake.requests if r["body"].get("model") == upstream_model)


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
def test_a_deadline_shorter_than_a_try_ends_the_request_with_504(
    gateway: Gateway, key: str, fake_openai: FakeOpenAI, stream: bool
) -> None:
    before = sent(fake_openai, "hang-headers")
    body = {"model": "patient/hang-then-fallback", "messages": MESSAGES, "stream": stream}
    response = gateway.post(key, body)
    assert response.status_code == 504, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("gateway_timeout", "deadline_exceeded")
    assert sent(fake_openai, "hang-headers") == before + 1, "one try, cut; no retry"
    # (the fallback, gpt-fake, is not tried: the deadline had passed)


def test_a_cut_try_is_counted_in_the_upstream_metrics(gateway: Gateway, key: str) -> None:
    """As the 504 it became (`klawd_upstream_errors_total{type="gateway_timeout"}`), not as an
    answer (no headers came: no duration). Before, a cut call was in neither."""
    url = f"{gateway.base_url}/metrics"
    _, before = scrape(url)
    response = gateway.post(key, {"model": "patient/hang-headers", "messages": MESSAGES})
    assert response.status_code == 504, response.text
    _, after = scrape(url)

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert grew("klawd_upstream_errors_total", provider="patient", type="gateway_timeout") == 1
    assert grew("klawd_upstream_request_duration_seconds_count", provider="patient") == 0


def test_the_messages_route_ends_at_the_deadline_too(
    gateway: Gateway, key: str, fake_openai: FakeOpenAI
) -> None:
    before = sent(fake_openai, "hang-headers")
    body = {"model": "patient/hang-headers", "messages": MESSAGES, "max_tokens": 16}
    response = gateway.post(key, body, route="/v1/messages")
    assert response.status_code == 504, response.text
    assert "deadline" in response.text
    assert sent(fake_openai, "hang-headers") == before + 1


def test_a_retry_after_longer_than_the_time_left_is_not_waited_for(
    gateway: Gateway, key: str, fake_openai: FakeOpenAI
) -> None:
    before = sent(fake_openai, "fail-429")
    response = gateway.post(key, {"model": "patient/fail-429", "messages": MESSAGES})
    assert response.status_code == 429, response.text
    assert response.json()["error"]["type"] == "rate_limit_exceeded"
    assert sent(fake_openai, "fail-429") == before + 1, "the 7 s Retry-After was not waited for"


def test_the_openai_sdk_gets_the_504_envelope(gateway: Gateway, key: str) -> None:
    with openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0) as sdk:
        with pytest.raises(openai.APIStatusError) as raised:
            sdk.chat.completions.create(model="patient/hang-headers", messages=MESSAGES)
    assert raised.value.status_code == 504
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["type"] == "gateway_timeout"
    assert raised.value.body["code"] == "deadline_exceeded"


def test_a_served_request_is_untouched(gateway: Gateway, key: str) -> None:
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "openai/gpt-fake", "messages": MESSAGES},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]


def test_an_image_generation_cut_by_the_deadline_is_cancelled_upstream(
    gateway: Gateway, key: str, fake_replicate: FakeReplicate
) -> None:
    """The prediction runs on Replicate (billed) unless cancelled: the cut cancels it, as the
    provider's own `timeout_s` does; and it is not generated again."""
    before = len(fake_replicate.creations("never"))
    body = {"model": "replicate-slow/never", "prompt": "x"}
    response = gateway.post(key, body, route="/v1/images/generations")
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "deadline_exceeded"
    creations = fake_replicate.creations("never")
    assert len(creations) == before + 1, "not retried after a timeout"
    prediction = [p for p in fake_replicate.predictions.values() if p["model"].endswith("/never")]
    for _ in polls(BOUND_S, 0.02):  # the cancel is sent in a task of its own, after the answer
        if prediction[-1]["status"] == "canceled":
            break
    assert prediction[-1]["status"] == "canceled"
