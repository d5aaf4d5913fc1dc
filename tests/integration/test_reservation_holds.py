"""A gateway on Redis killed with a stream open (SIGKILL: nothing settles it) leaves that
stream's credit reservation held only until `[store] reservation_hold_s`: the account's next
request, through another gateway sharing the Redis, gets it back (gateway/store/lua/klawd.lua,
`klawd_admit_v3`). Before holds, the reservation stayed taken for good."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import redis

from tests.conftest import (
    ADMIN_TOKEN,
    children,
    free_port,
    gateway_config,
    start_gateway,
    stop,
)
from tests.fakes.openai_upstream import FakeOpenAI
from tests.live_bound import running_deadline, wait_exit
from tests.redis_server import RedisServer

HOLD_S = 3  # short for the test; the second gateway's answers are settled within their own
BOUND_S = 15  # every wait here is bounded by this (never a timing assertion)
CREDIT_MICROS = 50_000_000


def config_on_redis(directory: Path, upstream: FakeOpenAI, redis_url: str) -> tuple[Path, int]:
    port = free_port()
    config = directory / "klawd.toml"
    gateway_config(config, port, upstream.base_url, store_url=redis_url)
    config.write_text(
        config.read_text().replace("[store]\n", f"[store]\nreservation_hold_s = {HOLD_S}\n", 1)
    )
    return config, port


def test_a_killed_gateways_reservation_is_given_back_after_its_hold(
    fake_openai: FakeOpenAI, redis_server: RedisServer, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config_a, port_a = config_on_redis(tmp_path / "a", fake_openai, redis_server.url)
    config_b, port_b = config_on_redis(tmp_path / "b", fake_openai, redis_server.url)
    killed = start_gateway(config_a, port_a)
    other = None
    client = redis.Redis.from_url(redis_server.url)
    try:
        with killed.admin() as admin:
            account = admin.post(
                "/admin/accounts", json={"name": "k", "plan": "enterprise", "credits_usd": 50}
            ).json()
            key = admin.post(f"/admin/accounts/{account['id']}/keys", json={}).json()["key"]
        credits = f"klawd:acct:{{{account['id']}}}:credits"
        holds = f"klawd:acct:{{{account['id']}}}:holds"

        def balance() -> int:
            return int(client.get(credits) or 0)

        chat = {"model": "openai/pause-fake", "messages": [{"role": "user", "content": "hi"}]}
        with httpx.stream(
            "POST",
            f"{killed.base_url}/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={**chat, "stream": True},
            timeout=30,
        ) as response:
            assert response.status_code == 200
            # Held until the kill: a generator dropped after its first piece closes the
            # response, and the gateway would settle the stream as its client's (499) before
            # it is killed, however fast the test reads (on a loaded machine it did).
            pieces = response.iter_raw()
            next(pieces)  # the stream is open: its reservation is taken
            held = CREDIT_MICROS - balance()
            assert held > 0
            (hold,) = client.zrange(holds, 0, -1)  # the stream's
            # The worker dies with the stream open (an OOM kill, say): nothing settles it.
            workers = children(killed.process.pid)
            assert workers
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            killed.process.kill()
            wait_exit(killed.process, 10)
        fake_openai.release()
        other = start_gateway(config_b, port_b)
        assert balance() == CREDIT_MICROS - held  # still reserved by the killed gateway
        passed = running_deadline(BOUND_S)
        time.sleep(HOLD_S)
        while True:  # the hold has expired by Redis's clock once an admission gives it back
            answer = httpx.post(
                f"{other.base_url}/v1/chat/completions",
                headers={"authorization": f"Bearer {key}"},
                json={**chat, "model": "openai/gpt-fake", "max_tokens": 5},
                timeout=10,
            )
            assert answer.status_code == 200, answer.text
            if client.zscore(holds, hold) is None:  # given back (by the answer's settlement)
                break
            assert not passed(), "the killed stream's hold was never given back"
            time.sleep(0.2)
        costs: list[int] = []
        passed = running_deadline(BOUND_S)  # a wait of its own, however long the first took
        with httpx.Client(
            base_url=other.base_url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
        ) as admin:
            while not passed():  # the answers' ledger entries are written
                usage = admin.get(f"/admin/accounts/{account['id']}/usage").json()
                costs = [round(row["cost_usd"] * 1e6) for row in usage.get("data", [])]
                if balance() == CREDIT_MICROS - sum(costs) and costs:
                    break
                time.sleep(0.1)
        assert costs and balance() == CREDIT_MICROS - sum(costs)
        assert client.zcard(holds) == 0
        log = (tmp_path / "b" / "gateway.log").read_text()
        assert f"gave back 1 expired credit reservation(s) of account {account['id']}" in log
        metrics = httpx.get(f"{other.base_url}/metrics", timeout=10).text
        assert "klawd_reservation_holds_released_total 1.0" in metrics.splitlines()
    finally:
        fake_openai.release()
        client.close()
        if other is not None:
            stop(other.process)
        if killed.process.poll() is None:
            stop(killed.process)
