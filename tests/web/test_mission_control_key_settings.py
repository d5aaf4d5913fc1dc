"""Mission Control's keys page: the account holder sets a key's budgets, limits and allowed
models (enforced at once by the API), and sees spend per key and per tag."""

from __future__ import annotations

import html
import re
import secrets

import httpx

from tests.conftest import Gateway
from tests.live_bound import polls
from tests.web.test_mission_control_http import MC, browser, csrf_of, sign_up

BOUND_S = 30  # a polling wait's hang guard, in running time (never a timing assertion)


def test_the_account_holder_sets_a_keys_budget_limits_models_and_tags(
    mc_gateway: Gateway,
) -> None:
    with browser(mc_gateway) as client:
        sign_up(client, f"team-{secrets.token_hex(4)}@example.com")
        page = client.get(f"{MC}/keys")
        created = client.post(f"{MC}/keys", data={"csrf": csrf_of(page.text), "name": "search"})
        found = re.search(r'id="new-key">(sk-klawd-[A-Za-z0-9_-]+)<', created.text)
        assert found
        key = found.group(1)
        listed = client.get(f"{MC}/keys")
        key_id = re.search(r'action="/mission-control/keys/(key_[0-9a-f]+)/settings"', listed.text)
        assert key_id, "every active key has a settings form"
        settings = {
            "csrf": csrf_of(listed.text),
            "usd_per_day": "0.5",
            "usd_per_month": "",
            "usd_total": "10",
            "requests_per_minute": "3",
            "requests_per_day": "",
            "models": "openai/gpt-*, klawd/standard",
            "tags": "team=search\nenv=prod",
        }
        saved = client.post(f"{MC}/keys/{key_id.group(1)}/settings", data=settings)
        assert saved.status_code == 303
        shown = html.unescape(client.get(f"{MC}/keys").text)
        assert "$0.50 / none / $10.00" in shown and "openai/gpt-*, klawd/standard" in shown
        assert "team=search" in shown and "env=prod" in shown
        headers = {"authorization": f"Bearer {key}"}
        echo = {"model": "klawd/echo", "messages": [{"role": "user", "content": "hi"}]}
        refused = httpx.post(
            f"{mc_gateway.base_url}/v1/chat/completions", headers=headers, json=echo
        )
        assert refused.status_code == 403, "the allowlist holds at once"
        fake = {**echo, "model": "openai/gpt-fake", "max_tokens": 5}
        answer = httpx.post(
            f"{mc_gateway.base_url}/v1/chat/completions", headers=headers, json=fake
        )
        assert answer.status_code == 200
        cost = answer.headers["x-klawd-cost-usd"]
        for _ in polls(BOUND_S, 0.05):  # the ledger settles in the background
            page_text = client.get(f"{MC}/keys").text
            if f"${cost.rstrip('0')}" in page_text:
                break
        tag_table = page_text.split('id="tag-spend"', 1)[1]
        assert "team=search" in tag_table and f"${cost.rstrip('0')}" in tag_table
        bad = client.post(
            f"{MC}/keys/{key_id.group(1)}/settings",
            data={**settings, "csrf": csrf_of(page_text), "usd_per_day": "-1"},
        )
        assert bad.status_code == 400 and "usd_per_day" in bad.text
        other = client.post(
            f"{MC}/keys/key_not_mine/settings", data={**settings, "csrf": csrf_of(page_text)}
        )
        assert other.status_code == 303, "another account's key is never touched"


def test_a_key_is_created_with_its_attributes_and_a_bad_one_is_a_400_that_keeps_the_form(
    mc_gateway: Gateway,
) -> None:
    with browser(mc_gateway) as client:
        sign_up(client, f"create-{secrets.token_hex(4)}@example.com")
        page = client.get(f"{MC}/keys")
        fields = {
            "name": "nightly",
            "expires": "30",
            "usd_per_day": "",
            "usd_per_month": "12.5",
            "usd_total": "",
            "requests_per_minute": "",
            "requests_per_day": "40",
            "models": "anthropic/*",
            "tags": "team=etl",
        }
        created = client.post(f"{MC}/keys", data={"csrf": csrf_of(page.text), **fields})
        assert created.status_code == 200 and 'id="new-key"' in created.text
        shown = html.unescape(created.text)
        assert "none / $12.50 / none" in shown and ">anthropic/*<" in shown
        assert (
            "team=etl" in shown
            and 'name="requests_per_day" inputmode="numeric" value="40"' in shown
        )
        bad = client.post(
            f"{MC}/keys",
            data={"csrf": csrf_of(created.text), **fields, "name": "x", "models": "anthropic/**"},
        )
        assert bad.status_code == 400 and 'id="new-key"' not in bad.text
        assert "models[0]" in html.unescape(bad.text)
        assert 'value="anthropic/**"' in bad.text, "the form comes back as typed"
        assert '<option value="30" selected>' in bad.text
        listed = html.unescape(client.get(f"{MC}/keys").text)
        assert listed.count('class="key-settings"') == 1, "the refused form made no key"
