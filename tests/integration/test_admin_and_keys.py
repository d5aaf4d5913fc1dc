"""Admin API, keys (expiry, revocation), accounts, /v1/models, klawd/echo and ops endpoints."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.conftest import Gateway


def test_admin_api_requires_the_admin_token(gateway: Gateway) -> None:
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic abc"}):
        response = httpx.post(
            f"{gateway.base_url}/admin/accounts", json={"name": "x"}, headers=headers
        )
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"


def test_an_api_key_is_not_an_admin_token(gateway: Gateway, api_key: str) -> None:
    response = httpx.post(
        f"{gateway.base_url}/admin/accounts",
        json={"name": "x"},
        headers={"authorization": f"Bearer {api_key}"},
    )
    assert response.status_code == 401


def test_create_read_and_patch_an_account(gateway: Gateway) -> None:
    with gateway.admin() as admin:
        created = admin.post("/admin/accounts", json={"name": "Ada", "plan": "free"})
        assert created.status_code == 201
        account = created.json()
        assert account["plan"] == "free"
        assert account["credits_usd"] == 5.0, "free accounts start with the plan's $5"
        assert account["limits"] == {
            "requests_per_minute": 10,
            "requests_per_day": 100,
            "tokens_per_minute": None,
        }
        assert account["images"] is False
        assert admin.get(f"/admin/accounts/{account['id']}").json() == account
        patched = admin.patch(
            f"/admin/accounts/{account['id']}",
            json={"plan": "pro", "credits_usd": 2.5, "limits": {"requests_per_day": 123}},
        ).json()
        assert patched["plan"] == "pro"
        assert patched["credits_usd"] == 7.5
        assert patched["limits"]["requests_per_day"] == 123
        assert patched["limits"]["requests_per_minute"] == 100
        assert patched["images"] is True


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "x", "plan": "platinum"}, "plan"),
        ({"name": ""}, "name"),
        ({}, "name"),
        ({"name": "x", "credits_usd": -1}, "credits_usd"),
        ({"name": "x", "colour": "red"}, None),
    ],
)
def test_bad_account_bodies_are_400(
    gateway: Gateway, body: dict[str, object], param: str | None
) -> None:
    with gateway.admin() as admin:
        response = admin.post("/admin/accounts", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    if param:
        assert error["param"] == param


def test_unknown_account_is_404(gateway: Gateway) -> None:
    with gateway.admin() as admin:
        assert admin.get("/admin/accounts/acct_nope").status_code == 404
        assert admin.post("/admin/accounts/acct_nope/keys", json={}).status_code == 404
        assert admin.delete("/admin/keys/key_nope").status_code == 404


def test_key_is_shown_once_with_prefix_and_works(gateway: Gateway) -> None:
    with gateway.admin() as admin:
        account = admin.post("/admin/accounts", json={"name": "k"}).json()
        created = admin.post(f"/admin/accounts/{account['id']}/keys", json={"name": "laptop"})
        assert created.status_code == 201
        key = created.json()
    assert key["key"].startswith("sk-klawd-")
    assert len(key["key"]) >= len("sk-klawd-") + 43, "at least 32 random bytes"
    assert key["key"].startswith(key["prefix"]) and len(key["prefix"]) < 20
    models = httpx.get(
        f"{gateway.base_url}/v1/models", headers={"authorization": f"Bearer {key['key']}"}
    )
    assert models.status_code == 200


def test_revoked_key_is_refused_at_once(gateway: Gateway) -> None:
    with gateway.admin() as admin:
        account = admin.post("/admin/accounts", json={"name": "r"}).json()
        key = admin.post(f"/admin/accounts/{account['id']}/keys", json={}).json()
        headers = {"authorization": f"Bearer {key['key']}"}
        assert httpx.get(f"{gateway.base_url}/v1/models", headers=headers).status_code == 200
        assert admin.delete(f"/admin/keys/{key['id']}").status_code == 204
    response = httpx.get(f"{gateway.base_url}/v1/models", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_expired_key_is_refused(gateway: Gateway) -> None:
    """A key expiring 2 s ahead is served, then refused once past its expiry. A machine
    stopped between the key's making and its first request (past its expiry: the request's
    answer came later than `expires_at`) proves nothing either way: tried again with a new key,
    a few times. A key refused before its expiry fails at once."""
    with gateway.admin() as admin:
        account = admin.post("/admin/accounts", json={"name": "e"}).json()
        past = admin.post(f"/admin/accounts/{account['id']}/keys", json={"expires_at": 1000})
        assert past.status_code == 400 and past.json()["error"]["param"] == "expires_at"
        for _ in range(5):
            expires_at = int(time.time()) + 2
            key = admin.post(
                f"/admin/accounts/{account['id']}/keys", json={"expires_at": expires_at}
            ).json()
            assert key["expires_at"] == expires_at
            headers = {"authorization": f"Bearer {key['key']}"}
            served = httpx.get(f"{gateway.base_url}/v1/models", headers=headers).status_code
            if served == 200:
                break
            assert time.time() >= expires_at, f"{served} before the key's expiry"
        else:
            raise AssertionError("the machine stopped past each key's expiry, 5 times")
    time.sleep(max(0.0, expires_at - time.time()) + 0.2)
    response = httpx.get(f"{gateway.base_url}/v1/models", headers=headers)
    assert response.status_code == 401
    assert "expired" in response.json()["error"]["message"]


def test_iso_expiry_is_accepted(gateway: Gateway) -> None:
    with gateway.admin() as admin:
        account = admin.post("/admin/accounts", json={"name": "iso"}).json()
        key = admin.post(
            f"/admin/accounts/{account['id']}/keys", json={"expires_at": "2099-01-01T00:00:00Z"}
        )
    assert key.status_code == 201
    assert key.json()["expires_at"] == 4070908800


def test_models_list_has_catalog_with_pricing_and_availability(
    gateway: Gateway, api_key: str
) -> None:
    response = httpx.get(
        f"{gateway.base_url}/v1/models", headers={"authorization": f"Bearer {api_key}"}
    )
    models = {m["id"]: m for m in response.json()["data"]}
    sonnet = models["anthropic/claude-sonnet-4"]
    assert sonnet["context_length"] == 200_000
    assert sonnet["pricing"]["input"] == 3.0 and sonnet["pricing"]["output"] == 15.0
    assert sonnet["available"] is True
    keyless = models["keyless/claude"]
    assert keyless["available"] is False
    assert "KLAWD_TEST_UNSET_PROVIDER_KEY" in keyless["unavailable_reason"]
    assert models["openai/gpt-4-turbo"]["available"] is True
    assert models["google/gemini-2.0-flash"]["pricing"]["input"] == 0.075
    assert models["replicate/seedream-4.5"]["pricing"]["per_image"] == 0.02
    assert models["klawd/echo"]["available"] is True
    assert models["klawd/standard"]["kind"] == "route"
    assert models["klawd/auto"]["kind"] == "route"


def test_one_model_by_path(gateway: Gateway, api_key: str) -> None:
    headers = {"authorization": f"Bearer {api_key}"}
    one = httpx.get(f"{gateway.base_url}/v1/models/openai/gpt-4-turbo", headers=headers)
    assert one.status_code == 200 and one.json()["context_length"] == 128_000
    missing = httpx.get(f"{gateway.base_url}/v1/models/openai/gpt-9", headers=headers)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_echo_answers_with_the_last_user_message(gateway: Gateway, api_key: str) -> None:
    client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=api_key, max_retries=0)
    completion = client.chat.completions.create(
        model="klawd/echo",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "Hello there, Klawd!"},
        ],
    )
    assert completion.choices[0].message.content == "Hello there, Klawd!"
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    assert completion.model == "klawd/echo"


def test_echo_streams_word_by_word_and_counts_usage(gateway: Gateway, api_key: str) -> None:
    client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=api_key, max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="klawd/echo",
            messages=[{"role": "user", "content": "one two three"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    words = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert words == ["one ", "two ", "three"]
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 4


def test_echo_respects_max_tokens(gateway: Gateway, api_key: str) -> None:
    client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=api_key, max_retries=0)
    completion = client.chat.completions.create(
        model="klawd/echo", messages=[{"role": "user", "content": "a b c d e"}], max_tokens=2
    )
    assert completion.choices[0].message.content == "a b "
    assert completion.choices[0].finish_reason == "length"


def test_health_and_readiness(gateway: Gateway) -> None:
    assert httpx.get(f"{gateway.base_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{gateway.base_url}/readyz").json() == {"status": "ready"}


def test_unknown_route_and_wrong_method_get_the_envelope(gateway: Gateway) -> None:
    missing = httpx.get(f"{gateway.base_url}/v2/everything")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    wrong = httpx.get(f"{gateway.base_url}/v1/chat/completions")
    assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "invalid_request"
