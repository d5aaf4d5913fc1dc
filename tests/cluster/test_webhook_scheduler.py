"""One webhook scheduler across replicas: two gateway processes (one with two Granian workers,
so three candidate schedulers) share one redis-server; each usage period is reported once and
every request is reported exactly once, whichever replica served it; an account's credit passing
80 % and 100 % of its grant is announced once per threshold and grant, whichever replicas settled
the spend. And a Mission Control session made on one replica is good on the other (one signing
key, kept in Redis)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.cluster.test_replicas_share_redis import burst
from tests.conftest import Gateway, free_port, gateway_config, start_gateway, stop
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.webhook_receiver import WebhookReceiver, verify
from tests.live_bound import polls
from tests.redis_server import RedisServer

HOOKS = """
[mission_control]
signup = true

[webhooks]
allow_private_networks = true
usage_interval_s = 1
poll_interval_s = 0.1
lease_ttl_s = 6
"""


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def replicas(
    redis_server: RedisServer, fake_openai: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Gateway]]:
    redis_server.flush()
    running = []
    for index, workers in enumerate((1, 2)):
        directory = tmp_path_factory.mktemp(f"hooks{index}")
        port = free_port()
        config = directory / "klawd.toml"
        gateway_config(config, port, fake_openai.base_url, extra=HOOKS, store_url=redis_server.url)
        running.append(start_gateway(config, port, workers=workers))
    yield running
    for gateway in running:
        stop(gateway.process)


def test_each_period_is_reported_once_across_replicas(
    replicas: list[Gateway], receiver: WebhookReceiver
) -> None:
    with replicas[0].admin() as admin:
        account = admin.post(
            "/admin/accounts", json={"name": "hooked", "plan": "pro", "credits_usd": 10}
        ).json()
        hook = admin.put(
            f"/admin/accounts/{account['id']}/webhook",
            json={"url": receiver.origin + "/cluster", "events": ["usage.updated"]},
        )
        assert hook.status_code == 200
        secret = hook.json()["secret"]
        key = admin.post(f"/admin/accounts/{account['id']}/keys", json={}).json()["key"]
    made = 0
    clients = [httpx.Client(base_url=g.base_url, timeout=10) for g in replicas]
    try:
        for n in range(12):  # over about four 1 s periods, alternating replicas
            answer = clients[n % 2].post(
                "/v1/chat/completions",
                headers={"authorization": f"Bearer {key}"},
                json={"model": "openai/gpt-fake", "messages": [{"role": "user", "content": "x"}]},
            )
            assert answer.status_code == 200
            made += 1
            time.sleep(0.3)
    finally:
        for client in clients:
            client.close()

    def reported() -> int:
        got = receiver.deliveries("/cluster")
        return sum(g["event"]["data"]["total"]["requests"] for g in got)

    for _ in polls(10, 0.05):  # 10 s of running time
        if reported() >= made:
            break
    time.sleep(1.5)  # more periods pass: late duplicates would show now
    got = receiver.deliveries("/cluster")
    assert reported() == made, "every request reported exactly once"
    periods = [g["event"]["data"]["period"]["start"] for g in got]
    assert len(periods) >= 3
    assert len(periods) == len(set(periods)), "no period reported twice"
    assert len({g["event"]["id"] for g in got}) == len(got)
    for g in got:
        assert verify(g["body"], g["headers"]["x-klawd-signature"], secret)


def test_an_accounts_credit_thresholds_are_announced_once_across_replicas(
    replicas: list[Gateway], receiver: WebhookReceiver
) -> None:
    # each request costs $0.00002 and reserves $0.000007 (tests/webhooks/test_budget_threshold)
    grant_usd = 0.0002
    body = {"model": "openai/gpt-fake", "messages": [{"role": "user", "content": "hi"}]}
    with replicas[0].admin() as admin:
        account = admin.post(
            "/admin/accounts",
            json={"name": "credit", "plan": "enterprise", "credits_usd": grant_usd},
        ).json()["id"]
        hook = admin.put(
            f"/admin/accounts/{account}/webhook",
            json={"url": receiver.origin + "/credit", "events": ["budget.threshold"]},
        )
        secret = hook.json()["secret"]
        key = admin.post(f"/admin/accounts/{account}/keys", json={}).json()["key"]

    def announced() -> list[tuple[int, int]]:
        return [
            (g["event"]["data"]["grant"], g["event"]["data"]["threshold_percent"])
            for g in receiver.deliveries("/credit")
        ]

    for grant in (1, 2):
        statuses = [r.status_code for r in burst(replicas, key, {**body, "max_tokens": 1}, 30)]
        assert 200 in statuses and 402 in statuses, "the grant is spent on both replicas"
        for _ in polls(10, 0.05):  # 10 s of running time
            if len(announced()) >= 2 * grant:
                break
        time.sleep(1.0)  # late duplicates from the other replica's settlements would show now
        # each once; the two of one burst may arrive in either order (two replicas may each
        # claim one, and deliver it)
        assert sorted(announced()) == [(n, p) for n in range(1, grant + 1) for p in (80, 100)]
        with replicas[1].admin() as admin:  # a top-up on the other replica: a new grant
            topped = admin.patch(f"/admin/accounts/{account}", json={"credits_usd": grant_usd})
            assert topped.status_code == 200
    for got in receiver.deliveries("/credit"):
        assert verify(got["body"], got["headers"]["x-klawd-signature"], secret)
        assert got["event"]["data"]["scope"] == "account"


def test_a_mission_control_session_works_on_every_replica(replicas: list[Gateway]) -> None:
    import re

    first, second = (
        httpx.Client(base_url=g.base_url, timeout=10, follow_redirects=False) for g in replicas
    )
    try:
        page = first.get("/mission-control/signup")
        token = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        assert token
        done = first.post(
            "/mission-control/signup",
            data={
                "csrf": token.group(1),
                "name": "Replicated",
                "email": f"r-{time.time_ns()}@example.com",
                "password": "a long enough password",
            },
        )
        assert done.status_code == 303
        second.cookies.set("klawd_session", first.cookies["klawd_session"], path="/mission-control")
        dashboard = second.get("/mission-control/dashboard")
        assert dashboard.status_code == 200
        assert "Replicated" in dashboard.text
    finally:
        first.close()
        second.close()
