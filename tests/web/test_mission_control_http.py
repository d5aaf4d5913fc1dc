"""Mission Control over plain HTTP: sign-up, cookies, CSRF, sessions, the operator view."""

from __future__ import annotations

import html
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import ADMIN_TOKEN, Gateway

MC = "/mission-control"


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, "every form carries a CSRF token"
    return found.group(1)


def browser(gateway: Gateway) -> httpx.Client:
    return httpx.Client(base_url=gateway.base_url, timeout=10, follow_redirects=False)


def sign_up(client: httpx.Client, email: str, password: str = "correct horse battery") -> None:  # noqa: S107
    page = client.get(f"{MC}/signup")
    assert page.status_code == 200
    done = client.post(
        f"{MC}/signup",
        data={"csrf": csrf_of(page.text), "name": "Ada", "email": email, "password": password},
    )
    assert done.status_code == 303, done.text
    assert done.headers["location"] == f"{MC}/dashboard"


def test_signup_gives_a_free_account_with_its_credit_and_a_safe_session_cookie(
    mc_gateway: Gateway,
) -> None:
    with browser(mc_gateway) as client:
        page = client.get(f"{MC}/signup")
        token = csrf_of(page.text)
        email = f"ada-{secrets.token_hex(4)}@example.com"
        done = client.post(
            f"{MC}/signup",
            data={"csrf": token, "name": "Ada", "email": email, "password": "long enough pw"},
        )
        cookie = done.headers["set-cookie"]
        assert "klawd_session=" in cookie
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
        dashboard = client.get(f"{MC}/dashboard")
        assert dashboard.status_code == 200
        assert 'id="plan">Free<' in dashboard.text
        assert 'id="balance">$5.00<' in dashboard.text
        assert "script-src 'self'" in dashboard.headers["content-security-policy"]


def test_posts_without_the_csrf_token_are_refused(mc_gateway: Gateway) -> None:
    with browser(mc_gateway) as client:
        client.get(f"{MC}/signup")
        refused = client.post(
            f"{MC}/signup",
            data={"name": "Eve", "email": "eve@example.com", "password": "long enough pw"},
        )
        assert refused.status_code == 403
        sign_up(client, f"bob-{secrets.token_hex(4)}@example.com")
        forged = client.post(f"{MC}/keys", data={"csrf": "0" * 64, "name": "stolen"})
        assert forged.status_code == 403
        keys = client.get(f"{MC}/keys")
        assert "stolen" not in keys.text


def test_a_session_cannot_be_forged_or_used_after_sign_out(mc_gateway: Gateway) -> None:
    with browser(mc_gateway) as client:
        assert client.get(f"{MC}/dashboard").headers["location"] == f"{MC}/login"
        sign_up(client, f"cy-{secrets.token_hex(4)}@example.com")
        session = client.cookies["klawd_session"]
        payload, _, mac = session.rpartition(".")
        client.cookies.set("klawd_session", payload + "." + "0" * len(mac), path=MC)
        assert client.get(f"{MC}/dashboard").status_code == 303, "a bad signature is no session"
        client.cookies.set("klawd_session", session, path=MC)
        page = client.get(f"{MC}/dashboard")
        assert page.status_code == 200
        out = client.post(f"{MC}/logout", data={"csrf": csrf_of(page.text)})
        assert out.status_code == 303
        assert (
            'klawd_session=""' in out.headers["set-cookie"]
            or "Max-Age=0" in out.headers["set-cookie"]
        )


def test_wrong_password_and_unknown_address_get_the_same_answer(mc_gateway: Gateway) -> None:
    email = f"dee-{secrets.token_hex(4)}@example.com"
    with browser(mc_gateway) as client:
        sign_up(client, email, password="the right password")
    with browser(mc_gateway) as client:
        page = client.get(f"{MC}/login")
        wrong = client.post(
            f"{MC}/login",
            data={"csrf": csrf_of(page.text), "email": email, "password": "not the password"},
        )
        unknown = client.post(
            f"{MC}/login",
            data={"csrf": csrf_of(page.text), "email": "no@example.com", "password": "whatever1"},
        )
        assert wrong.status_code == unknown.status_code == 401
        assert "Wrong e-mail address or password." in wrong.text
        right = client.post(
            f"{MC}/login",
            data={"csrf": csrf_of(page.text), "email": email, "password": "the right password"},
        )
        assert right.status_code == 303 and right.headers["location"] == f"{MC}/dashboard"


def test_keys_are_created_shown_once_and_revoked(mc_gateway: Gateway) -> None:
    with browser(mc_gateway) as client:
        sign_up(client, f"kay-{secrets.token_hex(4)}@example.com")
        page = client.get(f"{MC}/keys")
        created = client.post(
            f"{MC}/keys", data={"csrf": csrf_of(page.text), "name": "laptop", "expires": "30"}
        )
        key = re.search(r'id="new-key">(sk-klawd-[A-Za-z0-9_-]+)<', created.text)
        assert key, "the new key is on the page once"
        listed = client.get(f"{MC}/keys")
        assert key.group(1) not in listed.text, "and never again"
        assert "laptop" in listed.text and "active" in listed.text
        answer = httpx.get(
            f"{mc_gateway.base_url}/v1/account",
            headers={"authorization": f"Bearer {key.group(1)}"},
        )
        assert answer.status_code == 200 and answer.json()["plan"] == "free"
        key_id = re.search(r'action="/mission-control/keys/(key_[0-9a-f]+)/revoke"', listed.text)
        assert key_id
        revoked = client.post(
            f"{MC}/keys/{key_id.group(1)}/revoke", data={"csrf": csrf_of(listed.text)}
        )
        assert revoked.status_code == 303
        after = httpx.get(
            f"{mc_gateway.base_url}/v1/account",
            headers={"authorization": f"Bearer {key.group(1)}"},
        )
        assert after.status_code == 401


def test_webhook_private_url_is_refused_on_a_gateway_that_forbids_it(gateway: Gateway) -> None:
    """The shared gateway has no self-signup: the page says so, and the operator signs in."""
    with browser(gateway) as client:
        assert client.get(f"{MC}/signup").status_code == 403
        page = client.get(f"{MC}/operator/login")
        wrong = client.post(
            f"{MC}/operator/login", data={"csrf": csrf_of(page.text), "token": "nope"}
        )
        assert wrong.status_code == 401
        signed = client.post(
            f"{MC}/operator/login", data={"csrf": csrf_of(page.text), "token": ADMIN_TOKEN}
        )
        assert signed.status_code == 303
        view = client.get(f"{MC}/operator")
        assert view.status_code == 200
        assert 'data-chart="top-spenders"' in view.text
        assert "<td>enterprise</td>" in view.text and "<td>free</td>" in view.text
        assert client.get(f"{MC}/dashboard").status_code == 303, "the operator has no account"


def test_static_assets_are_served_by_the_gateway_and_pages_load_nothing_else(
    mc_gateway: Gateway,
) -> None:
    with browser(mc_gateway) as client:
        sign_up(client, f"st-{secrets.token_hex(4)}@example.com")
        for path in ("/dashboard", "/keys", "/webhook"):
            html = client.get(f"{MC}{path}").text
            urls = re.findall(r'(?:src|href)="([^"#]+)"', html)
            assert urls
            assert all(u.startswith("/") for u in urls), urls
        assert client.get(f"{MC}/static/app.css").headers["content-type"].startswith("text/css")
        assert client.get(f"{MC}/static/app.js").status_code == 200
        assert client.get(f"{MC}/static/../../etc/passwd").status_code == 404


def test_the_python_quick_start_runs_as_pasted(mc_gateway: Gateway, tmp_path: Path) -> None:
    with browser(mc_gateway) as client:
        sign_up(client, f"qs-{secrets.token_hex(4)}@example.com")
        page = client.get(f"{MC}/keys")
        created = client.post(f"{MC}/keys", data={"csrf": csrf_of(page.text), "name": "qs"})
        found = re.search(r'id="new-key">(sk-klawd-[A-Za-z0-9_-]+)<', created.text)
        assert found
        dashboard = client.get(f"{MC}/dashboard", params={"model": "openai/gpt-fake"})
    snippet = re.search(r'<pre id="snippet-python"><code>(.*?)</code></pre>', dashboard.text, re.S)
    assert snippet
    script = tmp_path / "quickstart.py"
    script.write_text(html.unescape(snippet.group(1)))
    assert '"openai/gpt-fake"' in script.read_text()
    done = subprocess.run(
        [sys.executable, str(script)],
        env={**os.environ, "KLAWD_API_KEY": found.group(1)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "the model's answer is printed"


def test_sign_in_attempts_per_address_are_limited(mc_gateway: Gateway) -> None:
    email = f"guess-{secrets.token_hex(4)}@example.com"
    with browser(mc_gateway) as client:
        sign_up(client, email, password="the real password")
    with browser(mc_gateway) as client:
        token = csrf_of(client.get(f"{MC}/login").text)
        answers = [
            client.post(
                f"{MC}/login", data={"csrf": token, "email": email, "password": f"guess {n}"}
            ).status_code
            for n in range(11)
        ]
        assert answers == [401] * 10 + [429]
        right = client.post(
            f"{MC}/login", data={"csrf": token, "email": email, "password": "the real password"}
        )
        assert right.status_code == 429, "even the right password waits"
        assert int(right.headers["retry-after"]) >= 1
