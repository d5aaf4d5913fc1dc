"""Cookie flags: HttpOnly and SameSite always; Secure over https or when configured (TLS proxy)."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.settings import load_settings


@pytest.mark.parametrize(
    ("secure_cookies", "base_url", "secure"),
    [
        (False, "http://gw.test", False),
        (False, "https://gw.test", True),
        (True, "http://gw.test", True),
    ],
)
def test_cookies_are_secure_over_https_or_when_configured(
    tmp_path: Path, secure_cookies: bool, base_url: str, secure: bool
) -> None:
    config = tmp_path / "klawd.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/c.db"\n'
        f"[mission_control]\nsignup = true\nsecure_cookies = {str(secure_cookies).lower()}\n"
    )
    app = create_app(load_settings(config), environ={})
    with TestClient(app, base_url=base_url) as client:
        cookie = client.get("/mission-control/signup").headers["set-cookie"]
    assert "klawd_csrf=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert ("Secure" in cookie) is secure
