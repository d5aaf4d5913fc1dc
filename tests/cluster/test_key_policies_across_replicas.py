"""Keys for teams on two replicas (one with two workers) sharing one redis-server: a PATCH of a
key reaches every replica at once, and a key's limits and budget are exact across all of them."""

from __future__ import annotations

import time

import httpx

from tests.cluster.test_replicas_share_redis import ECHO, burst, new_account, replicas
from tests.conftest import Gateway
from tests.live_bound import running_deadline

__all__ = ["replicas"]  # the module-scoped fixture: two replicas on one redis


def chat_everywhere(replicas: list[Gateway], key: str, model: str) -> list[int]:
    body = {**ECHO, "model": model}
    return [
        httpx.post(
            f"{gateway.base_url}/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json=body,
            timeout=20,
        ).status_code
        for gateway in replicas
        for _ in range(4)  # reaches both workers of the second replica
    ]


def test_a_key_patch_reaches_every_replica_at_once(replicas: list[Gateway]) -> None:
    _, key_id, key = new_account(replicas[0], plan="enterprise", credits_usd=100)
    assert set(chat_everywhere(replicas, key, "klawd/echo")) == {200}, "cached everywhere"
    with replicas[0].admin() as admin:
        patched = admin.patch(f"/admin/keys/{key_id}", json={"models": ["openai/*"]})
        assert patched.status_code == 200
    time.sleep(0.2)  # pub/sub delivery, far below the 5 s cache TTL
    assert set(chat_everywhere(replicas, key, "klawd/echo")) == {403}
    assert set(chat_everywhere(replicas, key, "openai/gpt-fake")) == {200}


def test_a_keys_limit_is_exact_across_replicas(replicas: list[Gateway]) -> None:
    account_id, _, _ = new_account(replicas[0], plan="enterprise")
    with replicas[0].admin() as admin:
        key = admin.post(
            f"/admin/accounts/{account_id}/keys", json={"limits": {"requests_per_day": 9}}
        ).json()["key"]
    statuses = [r.status_code for r in burst(replicas, key, ECHO, 30)]
    assert statuses.count(200) == 9 and statuses.count(429) == 21


def test_a_keys_budget_is_never_overspent_across_replicas(replicas: list[Gateway]) -> None:
    account_id, _, _ = new_account(replicas[0], plan="enterprise", credits_usd=100)
    with replicas[0].admin() as admin:
        key = admin.post(
            f"/admin/accounts/{account_id}/keys", json={"budget": {"usd_per_day": 0.0003}}
        ).json()
    body = {**ECHO, "model": "openai/gpt-fake", "max_tokens": 40}
    responses = burst(replicas, key["key"], body, 30)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 402} and 402 in statuses and 200 in statuses
    spent = sum(float(r.headers["x-klawd-cost-usd"]) for r in responses if r.status_code == 200)
    passed = running_deadline(10)
    while True:
        with replicas[1].admin() as admin:
            seen = admin.get(f"/admin/keys/{key['id']}").json()["spend_usd"]
        if abs(seen["today"] - spent) < 1e-9 or passed():
            break
        time.sleep(0.05)
    assert abs(seen["today"] - spent) < 1e-9
    assert seen["today"] <= 0.0003
