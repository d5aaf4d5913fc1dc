"""`klawd keys create | update | show | list` with budgets, limits, models and tags, on the
embedded store (the admin API's twins, validated the same way)."""

from __future__ import annotations

from pathlib import Path

from tests.webhooks.test_cli import klawd, ok


def test_cli_creates_updates_and_shows_a_keys_attributes(tmp_path: Path) -> None:
    account = ok(tmp_path, "accounts", "create", "--name", "cli")["id"]
    created = ok(
        tmp_path,
        "keys",
        "create",
        account,
        "--budget-usd-day",
        "5",
        "--models",
        "openai/*",
        "--models",
        "anthropic/claude-*,klawd/standard",
        "--tag",
        "team=search",
        "--rpm",
        "20",
    )
    assert created["key"].startswith("sk-klawd-")
    assert created["budget"]["usd_per_day"] == 5.0
    assert created["models"] == ["openai/*", "anthropic/claude-*", "klawd/standard"]
    assert created["tags"] == {"team": "search"} and created["limits"]["requests_per_minute"] == 20
    updated = ok(
        tmp_path, "keys", "update", created["id"], "--budget-usd-day", "none", "--all-models"
    )
    assert updated["budget"]["usd_per_day"] is None and updated["models"] == []
    assert updated["tags"] == {"team": "search"}, "not given: kept"
    shown = ok(tmp_path, "keys", "show", created["id"])
    assert shown["spend_usd"] == {"today": 0.0, "month": 0.0, "total": 0.0}
    assert "key" not in shown
    assert [k["id"] for k in ok(tmp_path, "keys", "list", account)] == [created["id"]]


def test_cli_refuses_bad_attributes_naming_them(tmp_path: Path) -> None:
    account = ok(tmp_path, "accounts", "create", "--name", "cli")["id"]
    negative = klawd(tmp_path, "keys", "create", account, "--budget-usd-total", "-1")
    assert negative.returncode == 1 and b"budget.usd_total" in negative.stderr
    glob = klawd(tmp_path, "keys", "create", account, "--models", "openai/[x]")
    assert glob.returncode == 1 and b"models[0]" in glob.stderr
    tag = klawd(tmp_path, "keys", "create", account, "--tag", "team")
    assert tag.returncode == 1 and b"NAME=VALUE" in tag.stderr
    missing = klawd(tmp_path, "keys", "show", "key_nope")
    assert missing.returncode == 1 and b"not_found" in missing.stderr
