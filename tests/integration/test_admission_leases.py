"""Admission leases through the gateway (decision 0003, "Admission leases (issue 19zl)"): the app
in process on the suite's real redis-server, a busy account's requests admitted from leases, and
at the end, once the app has shut down (its leases given back) and its ledger settled, the
account's books as exact as per-request admissions keep them: every request in the day's quota
and the ledger, the balance moved by the ledger's cost alone, no hold and no lease left."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvloop

from gateway.store.base import open_store
from gateway.store.redis import RedisStore
from gateway.store.redis_limiter import RedisLimiter, _acct
from tests.conftest import ADMIN_TOKEN, free_port, gateway_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.integration.test_streams_freed import started
from tests.redis_server import RedisServer

CREDIT_USD = 100
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

    def counted(self: RedisLimiter, *args: Any) -> Any:
        admission = admit_leased(self, *args)
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
                f"/admin/accounts/{account_id}/keys", b"{}", ADMIN_TOKEN
            )
            assert status == 201, answer
            key = orjson.loads(answer)["key"]
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
        finally:
            await store.close()

    uvloop.run(books())
