"""Keys for teams end to end, on the embedded store and on Redis: the admin API's key attributes,
the model allowlist (globs, routes, fallbacks) before any upstream call, a key's own limits, its
budget (402 `key_budget_exceeded`, never overspent by concurrent requests), spend per key and the
usage report grouped by key, model and tag."""

from __future__ import annotations

import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import (
    Gateway,
)
from tests.fakes.openai_upstream import FakeOpenAI
from tests.live_bound import running_deadline


@pytest.fixture(scope="module")
def teams(gateway_on_each_store: Gateway) -> Gateway:
    return gateway_on_each_store


def new_account(gateway: Gateway, credits_usd: float = 100.0) -> str:
    with gateway.admin() as admin:
        account = admin.post(
            "/admin/accounts",
            json={"name": "team", "plan": "enterprise", "credits_usd": credits_usd},
        )
        assert account.status_code == 201, account.text
        account_id: str = account.json()["id"]
        return account_id


def new_key(gateway: Gateway, account_id: str, **attributes: Any) -> dict[str, Any]:
    with gateway.admin() as admin:
        created = admin.post(f"/admin/accounts/{account_id}/keys", json=attributes)
    assert created.status_code == 201, created.text
    key: dict[str, Any] = created.json()
    return key


def chat(gateway: Gateway, key: str, model: str, **fields: Any) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], **fields},
        timeout=20,
    )


def shown(gateway: Gateway, key_id: str) -> dict[str, Any]:
    with gateway.admin() as admin:
        response = admin.get(f"/admin/keys/{key_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_for_spend(gateway: Gateway, key_id: str, total_usd: float) -> dict[str, Any]:
    passed = running_deadline(10)
    while True:
        key = shown(gateway, key_id)
        if abs(key["spend_usd"]["total"] - total_usd) < 1e-9 or passed():
            return key
        time.sleep(0.05)


# -- the admin API ---------------------------------------------------------------------------------
def test_key_attributes_are_set_shown_and_patched(teams: Gateway) -> None:
    account_id = new_account(teams)
    key = new_key(
        teams,
        account_id,
        name="search",
        budget={"usd_per_day": 5, "usd_total": 100},
        limits={"requests_per_minute": 30},
        models=["openai/*", "klawd/standard"],
        tags={"team": "search", "env": "prod"},
    )
    assert key["key"].startswith("sk-klawd-")
    seen = shown(teams, key["id"])
    assert "key" not in seen and key["key"] not in str(seen), "never the secret again"
    assert seen["budget"] == {"usd_per_day": 5.0, "usd_per_month": None, "usd_total": 100.0}
    assert seen["limits"] == {"requests_per_minute": 30, "requests_per_day": None}
    assert seen["models"] == ["openai/*", "klawd/standard"]
    assert seen["tags"] == {"team": "search", "env": "prod"}
    assert seen["spend_usd"] == {"today": 0.0, "month": 0.0, "total": 0.0}
    with teams.admin() as admin:
        patched = admin.patch(
            f"/admin/keys/{key['id']}",
            json={"budget": {"usd_per_month": 50, "usd_total": None}, "tags": {"team": "ads"}},
        )
        assert patched.status_code == 200, patched.text
        listed = admin.get(f"/admin/accounts/{account_id}/keys")
    body = patched.json()
    assert body["budget"] == {"usd_per_day": 5.0, "usd_per_month": 50.0, "usd_total": None}
    assert body["limits"]["requests_per_minute"] == 30, "left out: kept"
    assert body["models"] == ["openai/*", "klawd/standard"] and body["tags"] == {"team": "ads"}
    assert listed.status_code == 200
    assert [k["id"] for k in listed.json()["data"]] == [key["id"]]
    assert listed.json()["data"][0]["spend_usd"]["total"] == 0.0
    assert key["key"] not in listed.text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"colour": "red"}, "colour"),
        ({"budget": {"usd_per_day": -1}}, "budget.usd_per_day"),
        ({"budget": {"usd_per_week": 1}}, "budget.usd_per_week"),
        ({"limits": {"requests_per_minute": 0}}, "limits.requests_per_minute"),
        ({"models": ["openai/[gpt]"]}, "models[0]"),
        ({"models": ["openai/*", "open ai/*"]}, "models[1]"),
        ({"models": "openai/*"}, "models"),
        ({"tags": {"team": 7}}, "tags[...]"),
    ],
)
def test_bad_key_attributes_are_400_naming_the_field(
    teams: Gateway, body: dict[str, Any], param: str
) -> None:
    account_id = new_account(teams)
    key = new_key(teams, account_id)
    with teams.admin() as admin:
        created = admin.post(f"/admin/accounts/{account_id}/keys", json=body)
        patched = admin.patch(f"/admin/keys/{key['id']}", json=body)
    for response in (created, patched):
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_request" and error["param"] == param


def test_an_unknown_key_is_404(teams: Gateway) -> None:
    with teams.admin() as admin:
        assert admin.get("/admin/keys/key_nope").status_code == 404
        assert admin.patch("/admin/keys/key_nope", json={"models": []}).status_code == 404
        assert admin.get("/admin/accounts/acct_nope/keys").status_code == 404


# -- the model allowlist ---------------------------------------------------------------------------
def test_a_model_outside_the_list_is_403_before_any_upstream_call(
    teams: Gateway, fake_openai: FakeOpenAI
) -> None:
    key = new_key(teams, new_account(teams), models=["anthropic/*"])
    marker = secrets.token_hex(8)
    sdk = openai.OpenAI(base_url=f"{teams.base_url}/v1", api_key=key["key"], max_retries=0)
    with sdk, pytest.raises(openai.PermissionDeniedError) as caught:
        sdk.chat.completions.create(
            model="openai/gpt-fake", messages=[{"role": "user", "content": marker}]
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["type"] == "permission_denied" and error["code"] == "model_not_allowed"
    assert not any(marker in str(r["body"]) for r in fake_openai.requests), "no upstream call"
    embedded = httpx.post(
        f"{teams.base_url}/v1/embeddings",
        headers={"authorization": f"Bearer {key['key']}"},
        json={"model": "openai/embed-fake", "input": "x"},
    )
    assert embedded.status_code == 403 and embedded.json()["error"]["code"] == "model_not_allowed"


def test_globs_and_routes_allow_what_they_name(teams: Gateway) -> None:
    account_id = new_account(teams)
    openai_only = new_key(teams, account_id, models=["openai/gpt-*"])["key"]
    assert chat(teams, openai_only, "openai/gpt-fake").status_code == 200
    assert chat(teams, openai_only, "klawd/echo").status_code == 403
    auto = chat(teams, openai_only, "klawd/auto")
    assert auto.status_code == 200, "an auto target outside the list is skipped"
    assert auto.headers["x-klawd-model"] == "openai/gpt-4-turbo"
    route_key = new_key(teams, account_id, models=["klawd/auto"])["key"]
    cheapest = chat(teams, route_key, "klawd/auto")
    assert cheapest.status_code == 200 and cheapest.headers["x-klawd-model"] == (
        "google/gemini-2.0-flash"
    ), "naming the route allows every target it resolves to"
    assert chat(teams, route_key, "google/gemini-2.0-flash").status_code == 403
    none_of_them = new_key(teams, account_id, models=["replicate/*"])["key"]
    refused = chat(teams, none_of_them, "klawd/standard")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"


def test_a_fallback_outside_the_list_is_skipped(teams: Gateway) -> None:
    account_id = new_account(teams)
    chain_only = new_key(teams, account_id, models=["openai/fallback-chain"])["key"]
    failed = chat(teams, chain_only, "openai/fallback-chain")
    assert failed.status_code >= 500, "the first target fails and its fallback is not allowed"
    both = new_key(teams, account_id, models=["openai/fallback-chain", "openai/gpt-fake"])["key"]
    served = chat(teams, both, "openai/fallback-chain")
    assert served.status_code == 200 and served.headers["x-klawd-model"] == "openai/gpt-fake"


def test_a_patch_takes_effect_at_once(teams: Gateway) -> None:
    key = new_key(teams, new_account(teams))
    assert chat(teams, key["key"], "klawd/echo").status_code == 200
    with teams.admin() as admin:
        admin.patch(f"/admin/keys/{key['id']}", json={"models": ["openai/*"]})
    assert chat(teams, key["key"], "klawd/echo").status_code == 403
    with teams.admin() as admin:
        admin.patch(f"/admin/keys/{key['id']}", json={"models": []})
    assert chat(teams, key["key"], "klawd/echo").status_code == 200, "empty means all"


# -- limits and budgets ----------------------------------------------------------------------------
def test_a_keys_limits_apply_on_top_of_the_plans(teams: Gateway) -> None:
    account_id = new_account(teams)
    tight = new_key(teams, account_id, limits={"requests_per_minute": 2})["key"]
    statuses = [chat(teams, tight, "klawd/echo") for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert statuses[0].headers["x-ratelimit-limit-requests"] == "2"
    denied = statuses[-1]
    assert denied.json()["error"]["type"] == "rate_limit_exceeded"
    assert "API key" in denied.json()["error"]["message"]
    assert 1 <= int(denied.headers["retry-after"]) <= 30
    other = new_key(teams, account_id)["key"]
    assert chat(teams, other, "klawd/echo").status_code == 200, "the account is not throttled"


def test_a_spent_key_budget_is_402_key_budget_exceeded(teams: Gateway) -> None:
    key = new_key(teams, new_account(teams), budget={"usd_per_day": 0.001})
    # worst case: 1000 output tokens at $2/M = $0.002 > $0.001
    refused = chat(teams, key["key"], "openai/gpt-fake", max_tokens=1000)
    assert refused.status_code == 402
    assert refused.json()["error"] == {
        "type": "insufficient_credits",
        "message": refused.json()["error"]["message"],
        "code": "key_budget_exceeded",
    }
    assert chat(teams, key["key"], "openai/gpt-fake", max_tokens=10).status_code == 200


def test_concurrent_requests_never_overspend_a_key(teams: Gateway) -> None:
    budget = 0.0003
    key = new_key(teams, new_account(teams), budget={"usd_total": budget})
    with ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(
            pool.map(lambda _: chat(teams, key["key"], "openai/gpt-fake", max_tokens=40), range(30))
        )
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 402} and 402 in statuses and 200 in statuses
    spent = sum(float(r.headers["x-klawd-cost-usd"]) for r in responses if r.status_code == 200)
    seen = wait_for_spend(teams, key["id"], spent)
    assert seen["spend_usd"]["total"] == pytest.approx(spent, abs=1e-9)
    assert seen["spend_usd"]["total"] <= budget


# -- spend reports ---------------------------------------------------------------------------------
def test_spend_is_reported_per_key_model_and_tag(teams: Gateway) -> None:
    account_id = new_account(teams)
    search = new_key(teams, account_id, name="s", tags={"team": "search"})
    ads = new_key(teams, account_id, name="a", tags={"team": "ads"})
    untagged = new_key(teams, account_id, name="u")
    costs: dict[str, float] = {}
    for key, count in ((search, 2), (ads, 1), (untagged, 1)):
        for _ in range(count):
            response = chat(teams, key["key"], "openai/gpt-fake", max_tokens=20)
            assert response.status_code == 200
            costs[key["id"]] = costs.get(key["id"], 0.0) + float(
                response.headers["x-klawd-cost-usd"]
            )
    seen = wait_for_spend(teams, search["id"], costs[search["id"]])
    assert seen["spend_usd"]["today"] == pytest.approx(costs[search["id"]], abs=1e-9)
    assert seen["spend_usd"]["month"] == pytest.approx(costs[search["id"]], abs=1e-9)
    wait_for_spend(teams, untagged["id"], costs[untagged["id"]])
    with teams.admin() as admin:
        url = f"/admin/accounts/{account_id}/usage"
        by_key = admin.get(url, params={"group_by": "key"}).json()["data"]
        by_tag = admin.get(url, params={"group_by": "tag:team"}).json()["data"]
        by_model = admin.get(url, params={"group_by": "model"}).json()["data"]
        bad = admin.get(url, params={"group_by": "colour"})
    assert {(r["key_id"], r["name"], r["requests"]) for r in by_key} == {
        (search["id"], "s", 2),
        (ads["id"], "a", 1),
        (untagged["id"], "u", 1),
    }
    assert [(r["value"], r["requests"]) for r in by_tag] == [("ads", 1), ("search", 2), (None, 1)]
    tag_costs = {r["value"]: r["cost_usd"] for r in by_tag}
    assert tag_costs["search"] == pytest.approx(costs[search["id"]], abs=1e-9)
    assert [(r["model"], r["requests"]) for r in by_model] == [("openai/gpt-fake", 4)]
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"


def test_every_billable_route_checks_the_allowlist(teams: Gateway) -> None:
    key = new_key(teams, new_account(teams), models=["openai/gpt-fake"])["key"]
    bearer = {"authorization": f"Bearer {key}"}
    calls = {
        "/v1/responses": ({"input": "hi"}, "klawd/echo"),
        "/v1/messages": (
            {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
            "klawd/echo",
        ),
        "/v1/embeddings": ({"input": "hi"}, "openai/embed-fake"),
        "/v1/images/generations": ({"prompt": "a cat"}, "openai/img-fake"),
    }
    for path, (body, model) in calls.items():
        refused = httpx.post(
            f"{teams.base_url}{path}", headers=bearer, json={**body, "model": model}, timeout=20
        )
        assert refused.status_code == 403, (path, refused.text)
        error = refused.json()["error"]
        if path == "/v1/messages":  # Anthropic's error shape there
            assert error["type"] == "permission_error" and "may not use" in error["message"]
        else:
            assert (error["type"], error["code"]) == ("permission_denied", "model_not_allowed")
    allowed = httpx.post(
        f"{teams.base_url}/v1/responses",
        headers=bearer,
        json={"model": "openai/gpt-fake", "input": "hi"},
        timeout=20,
    )
    assert allowed.status_code == 200, allowed.text


def test_a_requests_own_models_fallback_outside_the_list_is_skipped(teams: Gateway) -> None:
    account_id = new_account(teams)
    failing_only = new_key(teams, account_id, models=["openai/fail-500"])["key"]
    body = {"models": ["klawd/echo"]}
    skipped = chat(teams, failing_only, "openai/fail-500", **body)
    assert skipped.status_code >= 500, "klawd/echo is not on the list: not tried"
    both = new_key(teams, account_id, models=["openai/fail-500", "klawd/*"])["key"]
    served = chat(teams, both, "openai/fail-500", **body)
    assert served.status_code == 200 and served.headers["x-klawd-model"] == "klawd/echo"
