"""The embedded store on a full disk: the ledger's writes fail, nothing is lost or served free.

A real full filesystem (a 4 MB tmpfs, mounted for the test: root only, skipped elsewhere)
under the SQLite store. While it is full the gateway keeps answering: requests are admitted
against reservations that the failed writes keep holding, so the account's credit runs out
(402) instead of requests being served unbilled; /readyz says the ledger's writes are failing
and the unsettled-entries gauge counts what the worker keeps. Once space is freed, every kept
entry is written: the ledger has each request served, once.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Gateway, free_port, gateway_config, start_gateway, stop
from tests.fakes.openai_upstream import FakeOpenAI
from tests.live_bound import running_deadline


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass  # no space left on device
    return filler


def unsettled(gateway: Gateway) -> float:
    metrics = httpx.get(f"{gateway.base_url}/metrics", timeout=10).text
    return sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("klawd_usage_unsettled_entries")
    )


def test_a_full_disk_fails_closed_then_settles_every_entry(
    small_disk: Path, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "klawd.toml"
    gateway_config(config, port, fake_openai.base_url, store_url=f"sqlite:///{small_disk}/k.db")
    gateway = start_gateway(config, port)
    try:
        key = gateway.new_key(credits_usd=1.0)
        headers = {"authorization": f"Bearer {key}"}
        body = {"model": "openai/gpt-fake", "messages": [{"role": "user", "content": "hi"}]}
        filler = fill(small_disk)
        statuses: dict[int, int] = {}
        for _ in range(400):
            answer = httpx.post(
                f"{gateway.base_url}/v1/chat/completions", json=body, headers=headers, timeout=10
            )
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
            if answer.status_code == 402:
                break
        assert set(statuses) <= {200, 402}, statuses
        assert statuses.get(402) == 1, f"the reservations held never used up the credit: {statuses}"
        served = statuses[200]
        passed = running_deadline(20)
        ready = httpx.get(f"{gateway.base_url}/readyz", timeout=10)
        while ready.status_code == 200 and not passed():
            time.sleep(0.2)
            ready = httpx.get(f"{gateway.base_url}/readyz", timeout=10)
        assert ready.status_code == 503, ready.text
        assert ready.json() == {"status": "usage ledger writes failing"}
        assert unsettled(gateway) > 0  # (the count at the last failed write)
        filler.unlink()
        passed = running_deadline(40)  # (was: 20 s past the first wait's end of 20 s)
        while not passed():
            view = httpx.get(f"{gateway.base_url}/v1/account", headers=headers, timeout=10).json()
            if view["usage_today"]["requests"] >= served:
                break
            time.sleep(0.2)
        assert view["usage_today"]["requests"] == served, view  # each served one, once
        assert view["credits_usd"] == pytest.approx(1.0 - view["usage_today"]["cost_usd"])
        assert httpx.get(f"{gateway.base_url}/readyz", timeout=10).json() == {"status": "ready"}
        assert unsettled(gateway) == 0
    finally:
        stop(gateway.process)
