"""One model, many deployments, end to end: a gateway of its own in front of three fake OpenAI
upstreams (one server per deployment), driven by the official openai SDK.

Each fake answers by upstream model name (tests/fakes/openai_upstream.py): an unknown name is a
normal answer, `fail-429` a 429 with Retry-After 7, `fail-500` a 500, `ratelimit-reset` a 429
with OpenAI's x-ratelimit-* headers. Every test uses upstream names of its own, so the requests
a fake received can be counted per test."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Gateway, free_port, gateway_config, start_gateway, stop
from tests.fakes.openai_upstream import FakeOpenAI
from tests.live_bound import running_deadline

MESSAGES: Any = [{"role": "user", "content": "hi"}]


def providers(fakes: dict[str, FakeOpenAI]) -> str:
    table = ""
    for name, fake in fakes.items():
        table += (
            f'[providers.dep-{name}]\nkind = "openai"\nbase_url = "{fake.base_url}"\n'
            'api_key_env = "OPENAI_API_KEY"\n'
            f'[providers.cap-{name}]\nkind = "openai"\nbase_url = "{fake.base_url}"\n'
            'api_key_env = "OPENAI_API_KEY"\nrequests_per_minute = 3\n'
        )
    return table


def model(model_id: str, *deployments: str, kind: str = "chat") -> str:
    """`deployments`: "provider:upstream[:weight[:priority]]"."""
    items = []
    for spec in deployments:
        provider, upstream, *rest = spec.split(":")
        weight = rest[0] if rest else "1"
        priority = rest[1] if len(rest) > 1 else "0"
        items.append(
            f'{{ provider = "{provider}", upstream_model = "{upstream}", '
            f"weight = {weight}, priority = {priority} }}"
        )
    return (
        f'[[models]]\nid = "{model_id}"\nkind = "{kind}"\n'
        f"input_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0\n"
        f"deployments = [{', '.join(items)}]\n"
    )


MODELS = "\n".join(
    [
        model("team/weighted", "dep-a:w-a:3", "dep-b:w-b:1"),
        model("team/resting", "dep-a:fail-429", "dep-b:rest-b"),
        model("team/reset", "dep-a:ratelimit-reset", "dep-b:reset-b"),
        model("team/sibling", "dep-a:fail-500", "dep-b:sib-b"),
        model("team/tiers", "dep-a:t-a:1:0", "dep-b:t-b:1:0", "dep-c:t-c:1:1"),
        model("team/tiers-down", "dep-a:fail-500", "dep-c:down-c:1:1"),
        model("team/capped", "cap-a:cap-a", "cap-b:cap-b"),
        model("team/down", "dep-a:fail-500", "dep-b:fail-500"),
        model("team/embed", "dep-a:embed-fake", "dep-b:embed-fake", kind="embedding"),
        model("team/image", "dep-a:img-fake", "dep-b:img-fake", kind="image"),
    ]
)


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeOpenAI]]:
    started = {name: FakeOpenAI() for name in ("a", "b", "c")}
    for fake in started.values():
        fake.start()
    yield started
    for fake in started.values():
        fake.stop()


@pytest.fixture(scope="module")
def gateway(
    fakes: dict[str, FakeOpenAI], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("deployments")
    port = free_port()
    config = directory / "klawd.toml"
    extra = f'[routing]\nbalance = "weighted"\ncooldown_s = 30\n{providers(fakes)}\n{MODELS}'
    gateway_config(config, port, fakes["a"].base_url, extra=extra)
    running = start_gateway(config, port)
    yield running
    stop(running.process)


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    key = gateway.new_key(credits_usd=1000.0, limits={"requests_per_minute": 10_000})
    with openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0) as sdk:
        yield sdk


def sent(fake: FakeOpenAI, upstream_model: str) -> int:
    return sum(1 for r in fake.requests if r["body"].get("model") == upstream_model)


def served_by(sdk: openai.OpenAI, model_id: str, stream: bool = False, **extra: Any) -> str:
    """One call; the provider (deployment) that served it, from x-klawd-provider."""
    if stream:
        with sdk.chat.completions.with_streaming_response.create(
            model=model_id, messages=MESSAGES, stream=True, extra_body=extra or None
        ) as response:
            text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
            assert text == "Hello from the fake"
            return response.headers["x-klawd-provider"]
    raw = sdk.chat.completions.with_raw_response.create(
        model=model_id, messages=MESSAGES, extra_body=extra or None
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the fake"
    assert raw.headers["x-klawd-model"] == completion.model
    return raw.headers["x-klawd-provider"]


def test_weights_share_the_traffic_three_to_one(
    client: openai.OpenAI, fakes: dict[str, FakeOpenAI]
) -> None:
    served = Counter(served_by(client, "team/weighted", stream=i % 2 == 1) for i in range(40))
    assert abs(served["dep-a"] - 30) <= 1 and abs(served["dep-b"] - 10) <= 1
    assert (sent(fakes["a"], "w-a"), sent(fakes["b"], "w-b")) == (served["dep-a"], served["dep-b"])


def test_models_list_shows_one_model_for_all_its_deployments(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids.count("team/weighted") == 1
    assert not any("@" in i for i in ids)


def test_a_deployment_answering_429_gets_nothing_until_its_retry_after(
    client: openai.OpenAI, fakes: dict[str, FakeOpenAI]
) -> None:
    started = time.monotonic()
    served = [served_by(client, "team/resting", stream=i % 2 == 1) for i in range(20)]
    elapsed = time.monotonic() - started
    assert served == ["dep-b"] * 20, "every call succeeds, on the sibling"
    # Retry-After: 7 — one more 429 per 7 s that the calls took, at most
    assert 1 <= sent(fakes["a"], "fail-429") <= 1 + int(elapsed / 7)


def test_ratelimit_reset_headers_rest_the_deployment(
    client: openai.OpenAI, fakes: dict[str, FakeOpenAI], gateway: Gateway
) -> None:
    served = [served_by(client, "team/reset") for _ in range(10)]
    assert served == ["dep-b"] * 10
    assert sent(fakes["a"], "ratelimit-reset") == 1, "reset in 6m0s: nothing more"
    status = httpx.get(f"{gateway.base_url}/status").json()
    dep_a = next(p for p in status["providers"] if p["name"] == "dep-a")
    rest = next(d for d in dep_a["deployments"] if d["key"] == "team/reset@dep-a")
    assert 300 < rest["resting_s"] <= 360


def test_a_500_is_retried_on_the_sibling_deployment(
    client: openai.OpenAI, fakes: dict[str, FakeOpenAI]
) -> None:
    served = [served_by(client, "team/sibling", stream=i % 2 == 1) for i in range(8)]
    assert served == ["dep-b"] * 8
    assert sent(fakes["a"], "fail-500") >= 1
    assert sent(fakes["b"], "sib-b") == 8


def test_a_higher_priority_tier_serves_only_when_the_first_cannot(
    client: openai.OpenAI, fakes: dict[str, FakeOpenAI]
) -> None:
    served = Counter(served_by(client, "team/tiers") for _ in range(10))
    assert served == {"dep-a": 5, "dep-b": 5}
    assert sent(fakes["c"], "t-c") == 0
    down = [served_by(client, "team/tiers-down", stream=i % 2 == 1) for i in range(4)]
    assert down == ["dep-c"] * 4


def test_caps_are_never_exceeded_and_then_upstream_capacity(
    client: openai.OpenAI, fakes: dict[str, FakeOpenAI]
) -> None:
    started = time.monotonic()
    served: list[str] = []
    refused: list[openai.RateLimitError] = []
    for i in range(9):
        try:
            served.append(served_by(client, "team/capped", stream=i % 3 == 0))
        except openai.RateLimitError as exc:
            refused.append(exc)
    elapsed = time.monotonic() - started
    refill = int(elapsed * 3 / 60)  # 3 requests per minute, refilled continuously
    assert sent(fakes["a"], "cap-a") <= 3 + refill and sent(fakes["b"], "cap-b") <= 3 + refill
    assert len(served) >= 6 and len(served) + len(refused) == 9
    assert refused, "the caps were spent"
    error = refused[0]
    assert error.body["type"] == "rate_limit_exceeded"  # type: ignore[index]
    assert error.body["code"] == "upstream_capacity"  # type: ignore[index]
    assert 1 <= int(error.response.headers["retry-after"]) <= 20


def test_request_models_are_fallbacks_after_model(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="team/down",
        messages=MESSAGES,
        extra_body={"models": ["team/weighted"]},
    )
    assert raw.headers["x-klawd-model"] == "team/weighted"
    assert raw.parse().model == "team/weighted"
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="team/down", messages=MESSAGES, extra_body={"models": ["nope/missing"]}
        )
    assert caught.value.body["param"] == "models[0]"  # type: ignore[index]


def test_request_models_work_on_the_messages_api(gateway: Gateway, client: openai.OpenAI) -> None:
    response = httpx.post(
        f"{gateway.base_url}/v1/messages",
        headers={"x-api-key": client.api_key, "anthropic-version": "2023-06-01"},
        json={
            "model": "team/down",
            "models": ["team/tiers"],
            "max_tokens": 50,
            "messages": MESSAGES,
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-klawd-model"] == "team/tiers"
    assert response.json()["type"] == "message"


def test_embeddings_use_the_same_choice(
    client: openai.OpenAI, fakes: dict[str, FakeOpenAI]
) -> None:
    before = {name: fakes[name].requests.copy() for name in ("a", "b")}
    providers_seen = Counter(
        client.embeddings.with_raw_response.create(model="team/embed", input="hello").headers[
            "x-klawd-provider"
        ]
        for _ in range(4)
    )
    assert providers_seen == {"dep-a": 2, "dep-b": 2}
    for name in ("a", "b"):
        assert len(fakes[name].requests) - len(before[name]) == 2


def test_images_use_the_same_choice(client: openai.OpenAI, fakes: dict[str, FakeOpenAI]) -> None:
    before = {name: sent(fakes[name], "img-fake") for name in ("a", "b")}
    providers_seen = Counter(
        client.images.with_raw_response.generate(
            model="team/image", prompt="a lighthouse", response_format="b64_json"
        ).headers["x-klawd-provider"]
        for _ in range(4)
    )
    assert providers_seen == {"dep-a": 2, "dep-b": 2}
    assert {n: sent(fakes[n], "img-fake") - before[n] for n in ("a", "b")} == {"a": 2, "b": 2}


def test_status_and_metrics_see_each_deployment(client: openai.OpenAI, gateway: Gateway) -> None:
    status = httpx.get(f"{gateway.base_url}/status").json()
    keys = {d["key"] for p in status["providers"] for d in p["deployments"]}
    assert {"team/weighted@dep-a", "team/weighted@dep-b"} <= keys
    weights = {d["key"]: d["weight"] for p in status["providers"] for d in p["deployments"]}
    assert weights["team/weighted@dep-a"] == 3
    passed = running_deadline(10)
    wanted = 'klawd_requests_total{kind="chat",model="team/weighted",provider="dep-b"'
    while wanted not in httpx.get(f"{gateway.base_url}/metrics").text:
        assert not passed(), "the deployment's provider never showed in /metrics"
        time.sleep(0.2)
