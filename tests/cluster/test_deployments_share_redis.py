"""Two gateway replicas on one real redis-server share the upstream capacity of a model's
deployments: a provider's cap holds across both (never exceeded, then `upstream_capacity`), a 429
seen by one replica rests that deployment on the other too, and a rest of an uncapped model
reaches the other replica's view (its /status) within its refresh."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, free_port, gateway_config, start_gateway, stop
from tests.fakes.openai_upstream import FakeOpenAI
from tests.live_bound import running_deadline
from tests.redis_server import RedisServer

MESSAGES = [{"role": "user", "content": "hi"}]
CAP = 4  # requests per minute of each capped provider


def extra(fakes: dict[str, FakeOpenAI]) -> str:
    text = '[routing]\nbalance = "weighted"\n'
    for name, fake in fakes.items():
        for prefix, cap in (("cap", CAP), ("big", 1000), ("open", None)):
            text += (
                f'[providers.{prefix}-{name}]\nkind = "openai"\nbase_url = "{fake.base_url}"\n'
                'api_key_env = "OPENAI_API_KEY"\n'
                + (f"requests_per_minute = {cap}\n" if cap else "")
            )
    for model_id, first, second in (
        ("team/capped", "cap-a:cl-cap-a", "cap-b:cl-cap-b"),
        ("team/resting", "big-a:fail-429", "big-b:cl-rest-b"),
        ("team/open", "open-a:fail-429", "open-b:cl-open-b"),
    ):
        deployments = ", ".join(
            f'{{ provider = "{p}", upstream_model = "{u}" }}'
            for p, u in (first.split(":"), second.split(":"))
        )
        text += f'[[models]]\nid = "{model_id}"\ndeployments = [{deployments}]\n'
    return text


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeOpenAI]]:
    started = {name: FakeOpenAI() for name in ("a", "b")}
    for fake in started.values():
        fake.start()
    yield started
    for fake in started.values():
        fake.stop()


@pytest.fixture(scope="module")
def replicas(
    redis_server: RedisServer,
    fakes: dict[str, FakeOpenAI],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[Gateway]]:
    redis_server.flush()
    running = []
    for index in range(2):
        directory = tmp_path_factory.mktemp(f"deployment-replica{index}")
        port = free_port()
        config = directory / "klawd.toml"
        gateway_config(
            config, port, fakes["a"].base_url, extra=extra(fakes), store_url=redis_server.url
        )
        running.append(start_gateway(config, port))
    yield running
    for gateway in running:
        stop(gateway.process)


@pytest.fixture(scope="module")
def key(replicas: list[Gateway]) -> str:
    return replicas[0].new_key(credits_usd=1000.0, limits={"requests_per_minute": 10_000})


def sent(fake: FakeOpenAI, upstream_model: str) -> int:
    return sum(1 for r in fake.requests if r["body"].get("model") == upstream_model)


def chat(gateway: Gateway, key: str, model: str, **extra: Any) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": model, "messages": MESSAGES, **extra},
        timeout=30,
    )


def test_a_cap_holds_across_replicas_then_upstream_capacity(
    replicas: list[Gateway], key: str, fakes: dict[str, FakeOpenAI]
) -> None:
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(
            pool.map(
                lambda i: chat(replicas[i % 2], key, "team/capped", stream=i % 3 == 0), range(20)
            )
        )
    elapsed = time.monotonic() - started
    refill = int(elapsed * CAP / 60)
    assert sent(fakes["a"], "cl-cap-a") <= CAP + refill
    assert sent(fakes["b"], "cl-cap-b") <= CAP + refill
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(refused) == 20
    assert 2 * CAP <= len(ok) <= 2 * CAP + 2 * refill, "both caps used up, exactly"
    assert {r.json()["error"]["code"] for r in refused} == {"upstream_capacity"}
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)


def test_a_429_on_one_replica_rests_the_deployment_on_the_other(
    replicas: list[Gateway], key: str, fakes: dict[str, FakeOpenAI]
) -> None:
    first = chat(replicas[0], key, "team/resting")
    assert first.status_code == 200 and first.headers["x-klawd-provider"] == "big-b"
    assert sent(fakes["a"], "fail-429") == 1
    started = time.monotonic()
    served = [chat(replicas[1], key, "team/resting").headers["x-klawd-provider"] for _ in range(8)]
    elapsed = time.monotonic() - started
    assert served == ["big-b"] * 8
    # Retry-After: 7, counted from the first call: no more 429s unless the calls took that long
    assert sent(fakes["a"], "fail-429") <= 1 + int(elapsed / 7)


def test_a_rest_of_an_uncapped_model_reaches_the_other_replica(
    replicas: list[Gateway], key: str
) -> None:
    response = chat(replicas[0], key, "team/open")
    assert response.status_code == 200 and response.headers["x-klawd-provider"] == "open-b"
    passed = running_deadline(10)
    while True:
        status = httpx.get(f"{replicas[1].base_url}/status").json()
        rests = {
            d["key"]: d["resting_s"]
            for p in status["providers"]
            for d in p["deployments"]
            if d["resting_s"] > 0
        }
        if "team/open@open-a" in rests:
            break
        assert not passed(), "the other replica never saw the rest"
        time.sleep(0.2)
    assert 0 < rests["team/open@open-a"] <= 7
