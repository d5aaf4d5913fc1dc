"""The webhook and invoice operations from the `klawd` CLI (the admin API's twins)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import KLAWD


def klawd(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    config = tmp_path / "klawd.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/cli.db"\n')
    return subprocess.run(
        [KLAWD, *args, "--config", str(config)], capture_output=True, cwd=tmp_path, check=False
    )


def ok(tmp_path: Path, *args: str) -> Any:
    done = klawd(tmp_path, *args)
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


def test_cli_sets_webhooks_refuses_private_urls_and_pays_invoices(tmp_path: Path) -> None:
    account = ok(tmp_path, "accounts", "create", "--name", "cli")["id"]
    refused = klawd(tmp_path, "webhook", "set", account, "http://127.0.0.1:9/hook")
    assert refused.returncode == 1
    assert b"invalid_request" in refused.stderr and b"not public" in refused.stderr
    hook = ok(tmp_path, "webhook", "set", account, "https://1.1.1.1/hook")
    assert hook["secret"].startswith("whsec_")
    rotated = ok(tmp_path, "webhook", "rotate", account)
    assert rotated["secret"] != hook["secret"]
    invoice = ok(tmp_path, "invoices", "create", account, "--amount-usd", "3.5")
    assert (invoice["status"], invoice["amount_usd"]) == ("open", 3.5)
    assert ok(tmp_path, "invoices", "pay", invoice["id"])["status"] == "paid"
    queued = ok(tmp_path, "webhook", "deliveries", account)["data"]
    assert [d["type"] for d in queued] == ["billing.invoice.paid"]
    assert queued[0]["status"] == "pending", "a running gateway delivers it"
