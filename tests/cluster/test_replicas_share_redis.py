"""Two gateway processes (one of them with two Granian workers) sharing one real redis-server:
limits exact across all of them, revocation and plan changes everywhere at once, credits never
below zero, and 503 (never a hang) while Redis is down."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import Gateway, free_port, gateway_config, start_gateway, stop
from tests.fakes.openai_upstream import FakeOpenAI
from tests.live_bound import call_within, running_deadline
from tests.redis_server import RedisClusterServers, RedisServer

FAKE = {"model": "openai/gpt-fake", "messages": [{"role": "user", "content": "hi"}]}
ECHO = {"model": "klawd/echo", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def replicas(
    redis_server: RedisServer, fake_openai: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Gateway]]:
    redis_server.flush()
    running = []
    for index, workers in enumerate((1, 2)):
        directory = tmp_path_factory.mktemp(f"replica{index}")
        port = free_port()
        config = directory / "klawd.toml"
        gateway_config(config, port, fake_openai.base_url, store_url=redis_server.url)
        running.append(start_gateway(config, port, workers=workers))
    yield running
    for gateway in running:
        stop(gateway.process)


def new_account(gateway: Gateway, **fields: Any) -> tuple[str, str, str]:
    with gateway.admin() as admin:
        account = admin.post("/admin/accounts", json={"name": "cluster", **fields}).json()
        key = admin.post(f"/admin/accounts/{account['id']}/keys", json={}).json()
    return account["id"], key["id"], key["key"]


def burst(
    replicas: list[Gateway], key: str, body: dict[str, Any], count: int
) -> list[httpx.Response]:
    clients = [httpx.Client(base_url=g.base_url, timeout=30) for g in replicas]
    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            return list(
                pool.map(
                    lambda i: clients[i % len(clients)].post(
                        "/v1/chat/completions",
                        headers={"authorization": f"Bearer {key}"},
                        json=body,
                    ),
                    range(count),
                )
            )
    finally:
        for client in clients:
            client.close()


def test_requests_per_minute_are_exact_across_replicas(replicas: list[Gateway]) -> None:
    account_id, _, key = new_account(replicas[0], plan="enterprise")
    with replicas[0].admin() as admin:
        admin.patch(f"/admin/accounts/{account_id}", json={"limits": {"requests_per_minute": 7}})
    started = time.monotonic()
    statuses = [r.status_code for r in burst(replicas, key, ECHO, 40)]
    elapsed = time.monotonic() - started
    # capacity + rate * elapsed: exactly 7 unless the burst took longer than 60/7 s
    assert 7 <= statuses.count(200) <= 7 + int(elapsed * 7 / 60)
    assert statuses.count(200) + statuses.count(429) == 40


def test_requests_per_day_are_exact_across_replicas(replicas: list[Gateway]) -> None:
    account_id, _, key = new_account(replicas[0], plan="enterprise")
    with replicas[0].admin() as admin:
        admin.patch(f"/admin/accounts/{account_id}", json={"limits": {"requests_per_day": 9}})
    statuses = [r.status_code for r in burst(replicas, key, ECHO, 40)]
    assert statuses.count(200) == 9
    assert statuses.count(429) == 31


def test_revocation_reaches_every_replica_at_once(replicas: list[Gateway]) -> None:
    _, key_id, key = new_account(replicas[0], plan="enterprise")
    headers = {"authorization": f"Bearer {key}"}
    for gateway in replicas:  # every replica now has the key in its cache
        for _ in range(4):
            assert httpx.get(f"{gateway.base_url}/v1/models", headers=headers).status_code == 200
    with replicas[0].admin() as admin:
        assert admin.delete(f"/admin/keys/{key_id}").status_code == 204
    time.sleep(0.2)  # pub/sub delivery, far below the 5 s cache TTL
    for gateway in replicas:
        for _ in range(4):
            assert httpx.get(f"{gateway.base_url}/v1/models", headers=headers).status_code == 401


def test_plan_change_reaches_every_replica_at_once(replicas: list[Gateway]) -> None:
    account_id, _, key = new_account(replicas[0], plan="free")
    headers = {"authorization": f"Bearer {key}"}
    for gateway in replicas:
        response = httpx.get(f"{gateway.base_url}/v1/account", headers=headers)
        assert response.json()["limits"]["requests_per_minute"] == 10
    with replicas[0].admin() as admin:
        admin.patch(f"/admin/accounts/{account_id}", json={"plan": "pro"})
    time.sleep(0.2)
    for gateway in replicas:
        for _ in range(4):
            response = httpx.post(
                f"{gateway.base_url}/v1/chat/completions", headers=headers, json=ECHO
            )
            assert response.headers["x-ratelimit-limit-requests"] == "100"


def test_credit_burst_never_goes_below_zero_and_ledger_matches(replicas: list[Gateway]) -> None:
    # Each request reserves about $0.0082 (max_tokens 4096 at $2/M) and costs $0.00002.
    account_id, _, key = new_account(replicas[0], plan="enterprise", credits_usd=0.03)
    responses = burst(replicas, key, FAKE, 40)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 402}
    assert statuses.count(200) >= 3
    costs = [float(r.headers["x-klawd-cost-usd"]) for r in responses if r.status_code == 200]
    passed = running_deadline(10)
    with replicas[0].admin() as admin:
        while True:
            usage = admin.get(f"/admin/accounts/{account_id}/usage").json()
            if usage["total"]["requests"] >= len(costs) or passed():
                break
            time.sleep(0.05)
        account = admin.get(f"/admin/accounts/{account_id}").json()
    assert usage["total"]["requests"] == len(costs)
    assert usage["total"]["prompt_tokens"] == 12 * len(costs)
    assert usage["total"]["cost_usd"] == pytest.approx(sum(costs))
    assert account["credits_usd"] == pytest.approx(0.03 - sum(costs))
    assert account["credits_usd"] >= 0


def test_redis_outage_gives_fast_503_and_recovers(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    server = RedisServer(free_port(), tmp_path)
    server.start()
    port = free_port()
    config = tmp_path / "klawd.toml"
    gateway_config(config, port, fake_openai.base_url, store_url=server.url)
    gateway = start_gateway(config, port)
    try:
        _, _, key = new_account(gateway, plan="enterprise")
        headers = {"authorization": f"Bearer {key}"}
        assert (
            httpx.post(
                f"{gateway.base_url}/v1/chat/completions", headers=headers, json=ECHO
            ).status_code
            == 200
        )
        saver = redis.Redis(port=server.port)
        saver.save()
        saver.close()
        server.stop()
        # within 10 s of this process's running time (a stop of the machine counts 0.5 s)
        down = call_within(
            lambda: httpx.post(
                f"{gateway.base_url}/v1/chat/completions", headers=headers, json=ECHO, timeout=30
            ),
            10,
        )
        assert down.status_code == 503
        assert down.json()["error"]["type"] == "service_unavailable"
        assert httpx.get(f"{gateway.base_url}/readyz", timeout=30).status_code == 503
        server.start()  # reloads the saved dump: accounts, keys and functions come back
        passed = running_deadline(15)
        while True:
            back = httpx.post(
                f"{gateway.base_url}/v1/chat/completions", headers=headers, json=ECHO, timeout=30
            )
            if back.status_code == 200 or passed():
                break
            time.sleep(0.2)
        assert back.status_code == 200
        assert httpx.get(f"{gateway.base_url}/readyz").status_code == 200
    finally:
        stop(gateway.process)
        server.stop()


def test_workers_above_one_without_redis_refuse_to_start(tmp_path: Path) -> None:
    from tests.conftest import KLAWD

    result = subprocess.run(
        [KLAWD, "serve", "--workers", "2", "--port", str(free_port())],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "redis" in result.stderr


def test_gateway_runs_on_a_redis_cluster(
    redis_cluster: RedisClusterServers, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    redis_cluster.flush()
    port = free_port()
    config = tmp_path / "klawd.toml"
    gateway_config(config, port, fake_openai.base_url, store_url=redis_cluster.url)
    gateway = start_gateway(config, port)
    try:
        account_id, _, key = new_account(gateway, plan="free")
        statuses = [r.status_code for r in burst([gateway], key, FAKE, 15)]
        assert statuses.count(200) == 10 and statuses.count(429) == 5
        passed = running_deadline(10)
        with gateway.admin() as admin:
            while True:
                usage = admin.get(f"/admin/accounts/{account_id}/usage").json()
                if usage["total"]["requests"] >= 10 or passed():
                    break
                time.sleep(0.05)
            account = admin.get(f"/admin/accounts/{account_id}").json()
        assert usage["total"]["requests"] == 10
        assert account["credits_usd"] == pytest.approx(5.0 - 10 * 0.00002)
    finally:
        stop(gateway.process)
