"""Mission Control lists the signed-in account's recent stored responses (and no one else's)."""

from __future__ import annotations

import re
import secrets

import httpx
import openai

from tests.conftest import Gateway
from tests.web.test_mission_control_http import MC, browser, csrf_of, sign_up


def _key(client: httpx.Client) -> str:
    page = client.get(f"{MC}/keys")
    created = client.post(f"{MC}/keys", data={"csrf": csrf_of(page.text), "name": "sdk"})
    found = re.search(r'id="new-key">(sk-klawd-[A-Za-z0-9_-]+)<', created.text)
    assert found
    return found.group(1)


def test_the_responses_page_lists_the_accounts_stored_responses_newest_first(
    mc_gateway: Gateway,
) -> None:
    with browser(mc_gateway) as mine, browser(mc_gateway) as theirs:
        sign_up(mine, f"rita-{secrets.token_hex(4)}@example.com")
        sign_up(theirs, f"otto-{secrets.token_hex(4)}@example.com")
        key = _key(mine)
        with openai.OpenAI(base_url=f"{mc_gateway.base_url}/v1", api_key=key, max_retries=0) as sdk:
            first = sdk.responses.create(model="klawd/echo", input="first question")
            second = sdk.responses.create(
                model="openai/gpt-fake", input="second", previous_response_id=first.id
            )
            unstored = sdk.responses.create(model="klawd/echo", input="secret", store=False)
        page = mine.get(f"{MC}/responses")
        assert page.status_code == 200
        assert page.text.index(second.id) < page.text.index(first.id), "newest first"
        assert "first question" in page.text  # the echo model's answer
        assert "openai/gpt-fake" in page.text
        assert unstored.id not in page.text
        assert f'href="{MC}/responses"' in page.text, "linked from the navigation"
        other = theirs.get(f"{MC}/responses")
        assert other.status_code == 200
        assert first.id not in other.text and "No stored responses yet." in other.text
    with browser(mc_gateway) as anonymous:
        assert anonymous.get(f"{MC}/responses").status_code == 303
