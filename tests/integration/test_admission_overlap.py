"""The upstream call is prepared while the admission is in flight (gateway/admission_gate.py), and
still: a refused request opens no upstream connection and sends nothing, and the errors keep their
order (401, 400/404/403 before the admission, then 429, then 402, then the upstream's). On both
stores (the overlap only happens on Redis; the embedded store must answer the same)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import (
    Gateway,
    free_port,
    gateway_config,
    start_gateway,
    stop,
)
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.counting_upstream import CountingUpstream
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.provider_config import PROVIDER_ENV, provider_config
from tests.fakes.replicate_upstream import FakeReplicate
from tests.redis_server import RedisServer

PRICED = "context_length = 8192\ninput_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0\n"


@pytest.fixture(scope="module")
def counting() -> Iterator[CountingUpstream]:
    upstream = CountingUpstream()
    upstream.start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def overlapped(
    request: pytest.FixtureRequest,
    counting: CountingUpstream,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
    fake_replicate: FakeReplicate,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    store_url = None
    if request.param == "redis":
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        store_url = redis_server.url
    directory = tmp_path_factory.mktemp(f"overlap-{request.param}")
    port = free_port()
    config = directory / "klawd.toml"
    extra = provider_config(fake_anthropic.base_url, fake_gemini.base_url, fake_replicate.base_url)
    extra += f"""
[providers.countai]
kind = "openai"
base_url = "{counting.base_url}"
api_key_env = "OPENAI_API_KEY"

[[models]]
id = "countai/m"
provider = "countai"
upstream_model = "m"
{PRICED}
# refused at connect (nothing listens on port 9), then falls back to the counted upstream
[[models]]
id = "deadai/paid"
provider = "deadai"
upstream_model = "refused"
fallbacks = ["countai/m"]
{PRICED}"""
    gateway_config(config, port, fake_openai.base_url, extra=extra, store_url=store_url)
    running = start_gateway(config, port, PROVIDER_ENV)
    yield running
    stop(running.process)


def chat(gateway: Gateway, key: str, model: str, **fields: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}
    return httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json=body,
        timeout=20,
    )


def warm(gateway: Gateway, key: str) -> None:
    """An admitted request first (klawd/echo reserves nothing): on Redis the store's connection
    is open and its functions loaded, so the next admissions are sent and overlapped."""
    assert chat(gateway, key, "klawd/echo").status_code == 200


def reached(counting: CountingUpstream) -> tuple[int, int]:
    return counting.connections, counting.requests


def test_a_request_refused_for_credit_opens_no_upstream_connection(
    overlapped: Gateway, counting: CountingUpstream
) -> None:
    key = overlapped.new_key(credits_usd=0)
    warm(overlapped, key)
    before = reached(counting)
    for stream in (False, True, False, True):
        answer = chat(overlapped, key, "countai/m", stream=stream)
        assert answer.status_code == 402, answer.text
        assert answer.json()["error"]["type"] == "insufficient_credits"
        assert "x-ratelimit-limit-requests" in answer.headers
    assert reached(counting) == before


def test_a_request_refused_by_the_rate_limit_opens_no_upstream_connection(
    overlapped: Gateway, counting: CountingUpstream
) -> None:
    key = overlapped.new_key(limits={"requests_per_minute": 3})
    warm(overlapped, key)
    assert chat(overlapped, key, "countai/m").status_code == 200
    assert chat(overlapped, key, "countai/m", stream=True).status_code == 200
    before = reached(counting)
    # The first refusal is the store's answer (overlapped on Redis; klawd/echo answers in
    # process without passing the gate, so the refusal is found after its call), the next
    # ones come from memory.
    for model, stream in (("klawd/echo", True), ("countai/m", False), ("countai/m", True)):
        answer = chat(overlapped, key, model, stream=stream)
        assert answer.status_code == 429, answer.text
        assert int(answer.headers["retry-after"]) >= 1
    assert reached(counting) == before


def test_a_key_over_its_budget_opens_no_upstream_connection(
    overlapped: Gateway, counting: CountingUpstream
) -> None:
    with overlapped.admin() as admin:
        account = admin.post(
            "/admin/accounts", json={"name": "budget", "plan": "enterprise", "credits_usd": 100}
        )
        created = admin.post(
            f"/admin/accounts/{account.json()['id']}/keys",
            json={"budget": {"usd_total": 0.000001}},
        )
        assert created.status_code == 201, created.text
        key = created.json()["key"]
    warm(overlapped, key)
    before = reached(counting)
    answer = chat(overlapped, key, "countai/m", stream=True)
    assert answer.status_code == 402, answer.text
    assert answer.json()["error"]["code"] == "key_budget_exceeded"
    assert reached(counting) == before


def test_the_refusal_comes_before_the_upstream_s_own_errors(
    overlapped: Gateway, counting: CountingUpstream
) -> None:
    """deadai/paid's upstream refuses every connect (503 after retries) and falls back to the
    counted one: a refused request gets its 402 or 429, and neither is tried."""
    broke = overlapped.new_key(credits_usd=0)
    warm(overlapped, broke)
    limited = overlapped.new_key(limits={"requests_per_minute": 2})
    warm(overlapped, limited)
    assert chat(overlapped, limited, "countai/m").status_code == 200
    before = reached(counting)
    for stream in (False, True):
        assert chat(overlapped, broke, "deadai/paid", stream=stream).status_code == 402
    for stream in (False, True):
        assert chat(overlapped, limited, "deadai/paid", stream=stream).status_code == 429
    assert reached(counting) == before
    admitted = chat(overlapped, overlapped.new_key(), "deadai/paid")
    assert admitted.status_code == 200, admitted.text  # the same model, admitted: it falls back
    assert admitted.headers["x-klawd-model"] == "countai/m"


def test_errors_decided_before_the_admission_keep_their_place(
    overlapped: Gateway, counting: CountingUpstream
) -> None:
    broke = overlapped.new_key(credits_usd=0)
    warm(overlapped, broke)
    before = reached(counting)
    assert chat(overlapped, "sk-klawd-unknown", "countai/m").status_code == 401
    invalid = chat(overlapped, broke, "countai/m", temperature=5)
    assert invalid.status_code == 400 and invalid.json()["error"]["param"] == "temperature"
    assert chat(overlapped, broke, "countai/no-such-model").status_code == 404
    with overlapped.admin() as admin:
        account = admin.post(
            "/admin/accounts", json={"name": "allow", "plan": "enterprise", "credits_usd": 0}
        )
        created = admin.post(
            f"/admin/accounts/{account.json()['id']}/keys", json={"models": ["klawd/echo"]}
        )
        narrow = created.json()["key"]
    warm(overlapped, narrow)
    refused = chat(overlapped, narrow, "countai/m")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"
    assert reached(counting) == before


def test_an_admitted_request_is_served_and_billed(
    overlapped: Gateway, counting: CountingUpstream
) -> None:
    key = overlapped.new_key()
    warm(overlapped, key)
    before = reached(counting)
    plain = chat(overlapped, key, "countai/m")
    assert plain.status_code == 200, plain.text
    assert plain.json()["choices"][0]["message"]["content"] == "counted"
    assert float(plain.headers["x-klawd-cost-usd"]) > 0
    streamed = chat(overlapped, key, "countai/m", stream=True)
    assert streamed.status_code == 200 and "counted" in streamed.text
    assert reached(counting)[1] == before[1] + 2


def admissions_timed(gateway: Gateway) -> dict[str, float]:
    """klawd_store_operation_duration_seconds_count by operation, from /metrics."""
    text = httpx.get(f"{gateway.base_url}/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("klawd_store_operation_duration_seconds_count{"):
            labels, _, value = line.rpartition(" ")
            operation = labels.split('operation="', 1)[1].split('"', 1)[0]
            counts[operation] = counts.get(operation, 0.0) + float(value)
    return counts


def test_an_overlapped_admission_is_timed_as_an_admission(overlapped: Gateway) -> None:
    """The store's latency histogram keeps one operation for the admission, however it was
    awaited (dashboards and alerts read `operation="admit"`)."""
    key = overlapped.new_key()
    warm(overlapped, key)
    before = admissions_timed(overlapped).get("admit", 0.0)
    for stream in (False, True, False):
        assert chat(overlapped, key, "countai/m", stream=stream).status_code == 200
    after = admissions_timed(overlapped)
    assert after.get("admit", 0.0) >= before + 3
    assert not {"send_admit", "admission_of"} & after.keys()


def test_an_overlapped_admission_on_a_redis_that_forgot_its_functions_is_made_again(
    overlapped: Gateway, counting: CountingUpstream, request: pytest.FixtureRequest
) -> None:
    """Redis restarted without persistence between two requests: the sent admission's error
    reply ("function not found") is not the request's answer; the functions are loaded again,
    the admission made once more, and the request served (read at the gate or at once)."""
    if request.node.callspec.params["overlapped"] != "redis":
        pytest.skip("the embedded store has no functions to forget")
    import redis

    server: RedisServer = request.getfixturevalue("redis_server")
    key = overlapped.new_key()
    warm(overlapped, key)
    client = redis.Redis(port=server.port)
    try:
        for stream in (False, True):
            client.function_flush()
            before = reached(counting)
            answer = chat(overlapped, key, "countai/m", stream=stream)
            assert answer.status_code == 200, answer.text
            assert reached(counting)[1] == before[1] + 1
    finally:
        client.close()
