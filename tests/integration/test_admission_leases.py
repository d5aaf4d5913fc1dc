"""Admission leases through the gateway (decision 0003, "Admission leases (issue 19zl)"): the app
in process on the suite's real redis-server, a busy account's requests (through a key with a
budget) admitted from leases, and
at the end, once the app has shut down (its leases given back) and its ledger settled, the
account's books as exact as per-request admissions keep them: every request in the day's quota
and the ledger, the balance moved by the ledger's cost alone, no hold and no lease left."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import uvloop

from gateway.store.base import open_store
from gateway.store.redis import RedisStore
from gateway.store.redis_limiter import LEASE_MAX, RedisLimiter, _acct, _spend_keys
from tests.conftest import ADMIN_TOKEN, free_port, gateway_config, start_gateway, stop
from tests.fakes.openai_upstream import FakeOpenAI
from tests.integration.test_streams_freed import started
from tests.live_bound import polls
from tests.redis_server import RedisServer

CREDIT_USD = 100
BOUND_S = 10  # every wait here is bounded by this (never a timing assertion)
WAVES, WAVE = 4, 40


@pytest.fixture(scope="module")
def config(
    tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAI, redis_server: RedisServer
) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("admission-leases") / "klawd.toml"
    gateway_config(path, free_port(), fake_openai.base_url, store_url=redis_server.url)
    yield path


def test_a_busy_accounts_books_are_exact_with_leases(
    config: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    leased: list[str] = []
    admit_leased = RedisLimiter.admit_leased

    def counted(self: RedisLimiter, *args: Any, **kwargs: Any) -> Any:
        admission = admit_leased(self, *args, **kwargs)
        if admission is not None:
            leased.append(admission.hold_id)
        return admission

    monkeypatch.setattr(RedisLimiter, "admit_leased", counted)
    body = orjson.dumps(
        {"model": "openai/gpt-fake", "messages": [{"role": "user", "content": "hi"}]}
    )
    stream = orjson.dumps(
        {"model": "openai/gpt-fake", "messages": [{"role": "user", "content": "hi"}],
         "stream": True}
    )  # fmt: skip

    async def main() -> tuple[str, list[int]]:
        async with started(config) as app:
            status, answer = await app.request(
                "/admin/accounts",
                orjson.dumps({"name": "busy", "plan": "enterprise", "credits_usd": CREDIT_USD}),
                ADMIN_TOKEN,
            )
            assert status == 201, answer
            account_id = orjson.loads(answer)["id"]
            status, answer = await app.request(
                f"/admin/accounts/{account_id}/keys",
                orjson.dumps({"budget": {"usd_per_day": 50, "usd_total": 80}}),
                ADMIN_TOKEN,
            )
            assert status == 201, answer
            key, key_ids[:] = orjson.loads(answer)["key"], [orjson.loads(answer)["id"]]
            statuses = []
            for wave in range(WAVES):
                answers = await asyncio.gather(
                    *[
                        app.request("/v1/chat/completions", stream if n % 2 else body, key)
                        for n in range(WAVE)
                    ]
                )
                statuses += [status for status, _ in answers]
                if wave == 1:  # an account change ends its leases (`klawd:invalidate`)
                    store = app.state["klawd"].store
                    await store.update_account(account_id, add_credits_micros=1_000_000)
        return account_id, statuses

    key_ids: list[str] = []
    account_id, statuses = uvloop.run(main())
    assert statuses == [200] * (WAVES * WAVE)
    assert leased, "no request was admitted from a lease"

    async def books() -> None:
        store = open_store(redis_server.url)
        assert isinstance(store, RedisStore)
        try:
            day = time.strftime("%Y-%m-%d", time.gmtime())
            rows = await store.usage(account_id, day, day)
            assert sum(row.requests for row in rows) == WAVES * WAVE
            cost = sum(row.cost_micros for row in rows)
            assert cost > 0
            account = await store.get_account(account_id)
            assert account is not None
            assert account.credits_micros == (CREDIT_USD + 1) * 1_000_000 - cost
            acct = _acct(account_id)
            assert int(await store._call("HGET", f"{acct}:rpd", "count")) == WAVES * WAVE
            assert await store._call("ZCARD", f"{acct}:holds") == 0
            assert await store._call("EXISTS", f"{acct}:leases") == 0
            # the key's budget periods: what was settled, nothing reserved
            for spend in _spend_keys(account_id, key_ids[0], day):
                assert await store._call("HMGET", spend, "s", "r") == [str(cost).encode(), b"0"]
        finally:
            await store.close()

    uvloop.run(books())


def fcalls(server: RedisServer) -> int:
    """How many FCALLs the suite's redis-server has run."""
    with redis.Redis(port=server.port) as client:
        return int(client.info("commandstats")["cmdstat_fcall"]["calls"])


def test_two_gateways_leasing_never_admit_beyond_the_day_quota(
    fake_openai: FakeOpenAI, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Two gateway processes on one Redis, an account with a day quota of QUOTA requests and
    limits otherwise far away: driven concurrently through both until both are refused, never
    more than the quota is admitted; once their leases are over and given back, what they held
    unused is admitted to the last request of the quota, and the books balance."""
    quota = 3000
    gateways = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        port = free_port()
        gateway_config(tmp_path / name / "klawd.toml", port, fake_openai.base_url,
                       store_url=redis_server.url)  # fmt: skip
        gateways.append(start_gateway(tmp_path / name / "klawd.toml", port))
    try:
        with gateways[0].admin() as admin:
            account = admin.post(
                "/admin/accounts",
                json={"name": "quota", "plan": "enterprise", "credits_usd": CREDIT_USD},
            ).json()
            limits = {"requests_per_minute": 10**7, "requests_per_day": quota}
            assert admin.patch(
                f"/admin/accounts/{account['id']}", json={"limits": limits}
            ).is_success
            key = admin.post(f"/admin/accounts/{account['id']}/keys", json={}).json()["key"]
        chat = {"model": "openai/gpt-fake", "messages": [{"role": "user", "content": "hi"}]}

        async def drive(base_url: str, admitted: list[int]) -> None:
            """16 clients until each is refused (bounded: 2 x the quota in all)."""
            async with httpx.AsyncClient(
                base_url=base_url, headers={"authorization": f"Bearer {key}"}, timeout=30
            ) as client:

                async def one_client() -> None:
                    for _ in range(2 * quota // 32):
                        answer = await client.post("/v1/chat/completions", json=chat)
                        if answer.status_code == 429:
                            return
                        assert answer.status_code == 200, answer.text
                        admitted.append(1)

                await asyncio.gather(*[one_client() for _ in range(16)])

        counts: list[list[int]] = [[], []]

        async def both() -> None:
            await asyncio.gather(
                drive(gateways[0].base_url, counts[0]), drive(gateways[1].base_url, counts[1])
            )

        calls_before = fcalls(redis_server)
        uvloop.run(both())
        admitted = len(counts[0]) + len(counts[1])
        # leases were used: per-request admissions would be a call each, and settling more
        assert fcalls(redis_server) - calls_before < admitted
        # refused while each gateway may hold a lease and its successor unused
        assert quota - 4 * LEASE_MAX <= admitted <= quota, (counts, quota)
        # once the leases are over (0.25 s) and given back, admitted to the last request
        turns = polls(BOUND_S, 0.1)
        while admitted < quota:
            answer = httpx.post(
                f"{gateways[admitted % 2].base_url}/v1/chat/completions",
                headers={"authorization": f"Bearer {key}"},
                json=chat,
                timeout=10,
            )
            if answer.status_code == 429:
                assert next(turns, None) is not None, f"{admitted} of {quota} admitted"
                continue
            assert answer.status_code == 200, answer.text
            admitted += 1
        for gateway in gateways:
            answer = httpx.post(
                f"{gateway.base_url}/v1/chat/completions",
                headers={"authorization": f"Bearer {key}"},
                json=chat,
                timeout=10,
            )
            assert answer.status_code == 429, answer.text
        with gateways[1].admin() as admin:
            turns = polls(10, 0.1)
            while True:  # the last settle batches written
                usage = admin.get(f"/admin/accounts/{account['id']}/usage").json()["data"]
                balance = admin.get(f"/admin/accounts/{account['id']}").json()["credits_usd"]
                spent = sum(round(row["cost_usd"] * 1e6) for row in usage)
                requests = sum(row["requests"] for row in usage)
                if requests == quota and round(balance * 1e6) == CREDIT_USD * 10**6 - spent:
                    break
                assert next(turns, None) is not None, (requests, balance, spent)
    finally:
        for gateway in gateways:
            stop(gateway.process)
