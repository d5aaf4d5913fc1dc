"""Plans, limits, credits and the ledger, end to end on the embedded store."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Gateway
from tests.live_bound import running_deadline

ECHO = {"model": "klawd/echo", "messages": [{"role": "user", "content": "hi"}]}
FAKE = {"model": "openai/gpt-fake", "messages": [{"role": "user", "content": "hi"}]}


def new_account(gateway: Gateway, **fields: Any) -> tuple[str, str]:
    with gateway.admin() as admin:
        account = admin.post("/admin/accounts", json={"name": "limits", **fields}).json()
        key = admin.post(f"/admin/accounts/{account['id']}/keys", json={}).json()["key"]
    return account["id"], key


def chat(gateway: Gateway, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json=body,
        timeout=20,
    )


def account_view(gateway: Gateway, key: str) -> dict[str, Any]:
    response = httpx.get(
        f"{gateway.base_url}/v1/account", headers={"authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200
    view: dict[str, Any] = response.json()
    return view


def wait_for_ledger(gateway: Gateway, key: str, requests: int) -> dict[str, Any]:
    passed = running_deadline(10)
    while True:
        view = account_view(gateway, key)
        if view["usage_today"]["requests"] >= requests or passed():
            return view
        time.sleep(0.05)


def test_free_plan_admits_ten_per_minute_then_429_with_retry_after(gateway: Gateway) -> None:
    _, key = new_account(gateway, plan="free")
    responses = [chat(gateway, key, ECHO) for _ in range(11)]
    assert [r.status_code for r in responses] == [200] * 10 + [429]
    first, denied = responses[0], responses[-1]
    assert first.headers["x-ratelimit-limit-requests"] == "10"
    assert first.headers["x-ratelimit-remaining-requests"] == "9"
    assert first.headers["x-ratelimit-reset-requests"] == "6s"
    assert denied.json()["error"]["type"] == "rate_limit_exceeded"
    assert 1 <= int(denied.headers["retry-after"]) <= 6
    assert denied.headers["x-ratelimit-remaining-requests"] == "0"
    assert denied.headers["x-ratelimit-remaining-requests-day"] == "90"


def test_denied_and_invalid_requests_consume_nothing(gateway: Gateway) -> None:
    _, key = new_account(gateway, plan="free")
    assert chat(gateway, key, {**ECHO, "temperature": 9}).status_code == 400
    assert chat(gateway, key, {**ECHO, "model": "nope/none"}).status_code == 404
    view = account_view(gateway, key)
    assert view["remaining"] == {"requests_minute": 10, "requests_day": 100}
    for _ in range(10):
        assert chat(gateway, key, ECHO).status_code == 200
    for _ in range(3):
        assert chat(gateway, key, ECHO).status_code == 429
    view = wait_for_ledger(gateway, key, 10)
    assert view["remaining"]["requests_day"] == 90, "429s took nothing from the daily quota"
    assert view["usage_today"]["requests"] == 10


def test_account_view_reports_plan_limits_balance_and_usage(gateway: Gateway) -> None:
    _, key = new_account(gateway, plan="free")
    assert chat(gateway, key, FAKE).status_code == 200
    view = wait_for_ledger(gateway, key, 1)
    assert view["plan"] == "free"
    assert view["limits"] == {
        "requests_per_minute": 10,
        "requests_per_day": 100,
        "tokens_per_minute": None,
    }
    assert view["usage_today"] == {
        "requests": 1,
        "prompt_tokens": 12,
        "completion_tokens": 4,
        "images": 0,
        "cost_usd": 0.00002,
    }
    assert view["credits_usd"] == pytest.approx(5.0 - 0.00002)


def test_account_view_is_free_to_call(gateway: Gateway) -> None:
    _, key = new_account(gateway, plan="free")
    for _ in range(15):
        account_view(gateway, key)
        httpx.get(f"{gateway.base_url}/v1/models", headers={"authorization": f"Bearer {key}"})
    assert account_view(gateway, key)["remaining"]["requests_minute"] == 10


def test_insufficient_credits_is_402_and_reserves_nothing(gateway: Gateway) -> None:
    _, key = new_account(gateway, plan="pro", credits_usd=0.001)
    # worst case: max_tokens 4096 at $2/M = $0.008192 > $0.001
    refused = chat(gateway, key, FAKE)
    assert refused.status_code == 402
    assert refused.json()["error"]["type"] == "insufficient_credits"
    assert refused.headers["x-ratelimit-limit-requests"] == "100"
    # a small max_tokens fits the balance, and the free echo model always does
    assert chat(gateway, key, {**FAKE, "max_tokens": 100}).status_code == 200
    assert chat(gateway, key, ECHO).status_code == 200
    view = wait_for_ledger(gateway, key, 2)
    assert view["credits_usd"] == pytest.approx(0.001 - 0.00002)
    assert view["remaining"]["requests_day"] == 10_000 - 2


def test_settlement_charges_exactly_the_reported_cost(gateway: Gateway) -> None:
    account_id, key = new_account(gateway, plan="pro", credits_usd=1.0)
    costs = []
    for _ in range(3):
        response = chat(gateway, key, FAKE)
        costs.append(float(response.headers["x-klawd-cost-usd"]))
    client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0)
    list(
        client.chat.completions.create(
            model="openai/gpt-fake",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
        )
    )
    view = wait_for_ledger(gateway, key, 4)
    assert view["usage_today"]["requests"] == 4
    assert view["usage_today"]["prompt_tokens"] == 48, "the stream was billed from its usage"
    assert view["credits_usd"] == pytest.approx(1.0 - sum(costs) - 0.00002)
    with gateway.admin() as admin:
        usage = admin.get(f"/admin/accounts/{account_id}/usage").json()
    assert usage["total"]["requests"] == 4
    assert usage["data"][0]["model"] == "openai/gpt-fake"
    assert usage["total"]["cost_usd"] == pytest.approx(0.00008)


def test_failed_upstream_call_is_recorded_and_costs_nothing(gateway: Gateway) -> None:
    _, key = new_account(gateway, plan="pro", credits_usd=1.0)
    for stream in (False, True):
        failed = chat(gateway, key, {**FAKE, "model": "openai/fail-500", "stream": stream})
        assert failed.status_code == 503
        # the admission's headers on the error, however the request asked
        assert failed.headers["x-ratelimit-limit-requests"] == "100"
    view = wait_for_ledger(gateway, key, 2)
    assert view["credits_usd"] == pytest.approx(1.0), "the reservation was released"
    assert view["usage_today"]["cost_usd"] == 0


def test_plan_change_takes_effect_at_once(gateway: Gateway) -> None:
    account_id, key = new_account(gateway, plan="free")
    for _ in range(10):
        assert chat(gateway, key, ECHO).status_code == 200
    assert chat(gateway, key, ECHO).status_code == 429
    with gateway.admin() as admin:
        admin.patch(f"/admin/accounts/{account_id}", json={"plan": "pro"})
    # The emptied bucket keeps its level; it now refills at the pro rate (100/min: one request
    # every 0.6 s instead of every 6 s), so the next 429 already says so.
    response = chat(gateway, key, ECHO)
    assert response.headers["x-ratelimit-limit-requests"] == "100"
    if response.status_code == 429:
        assert response.headers["retry-after"] == "1"
        time.sleep(0.7)
        response = chat(gateway, key, ECHO)
    assert response.status_code == 200


def test_custom_daily_limit(gateway: Gateway) -> None:
    account_id, key = new_account(gateway, plan="enterprise")
    with gateway.admin() as admin:
        admin.patch(f"/admin/accounts/{account_id}", json={"limits": {"requests_per_day": 3}})
    assert [chat(gateway, key, ECHO).status_code for _ in range(5)] == [200, 200, 200, 429, 429]


def test_usage_query_rejects_bad_dates(gateway: Gateway) -> None:
    account_id, _ = new_account(gateway)
    with gateway.admin() as admin:
        response = admin.get(f"/admin/accounts/{account_id}/usage", params={"since": "yesterday"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "since"


def test_clean_shutdown_loses_no_ledger_entry(fake_openai: Any, tmp_path: Any) -> None:
    import sqlite3

    from tests.conftest import free_port, gateway_config, start_gateway, stop

    port = free_port()
    config = tmp_path / "klawd.toml"
    gateway_config(config, port, fake_openai.base_url)
    gateway = start_gateway(config, port)
    try:
        _, key = new_account(gateway, plan="enterprise", credits_usd=10.0)
        statuses = [chat(gateway, key, FAKE).status_code for _ in range(25)]
        assert statuses == [200] * 25
    finally:
        stop(gateway.process)  # SIGTERM right after the last answer: entries may still be queued
    with sqlite3.connect(tmp_path / "klawd.db") as db:
        count, cost = db.execute(
            "SELECT COUNT(*), SUM(cost_micros) FROM usage_ledger WHERE model = 'openai/gpt-fake'"
        ).fetchone()
    assert count == 25
    assert cost == 25 * 20
