"""`[retry] deadline_s` while the request's own admission is still on its way (Redis): the
upstream call waits at the admission gate (gateway/admission_gate.py) inside the first try, and
the deadline passes there. The admission's reply must still be read, so that the request ends
as a timed-out admitted request (504 `deadline_exceeded`, its reservation settled at no cost),
not as an admission abandoned halfway (before: `read_reply` took the cut's cancellation as the
client leaving, gave the admission back, and the request's ticket was then asked of an
admission never decided: 500). The app runs in process on the suite's real redis-server,
paused (`CLIENT PAUSE`) past the deadline while the admission's `FCALL` is in flight."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis
import uvloop

from gateway.store import resp
from tests.conftest import free_port, gateway_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.integration.test_cancelled_admission import chat_body, until, warmed
from tests.integration.test_request_deadline import with_deadline
from tests.integration.test_streams_freed import started
from tests.redis_server import RedisServer

DEADLINE_S = 0.2
PAUSE_MS = 1000  # the admission's reply held back well past the deadline


@pytest.fixture(scope="module")
def config(
    tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAI, redis_server: RedisServer
) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("deadline-admission") / "klawd.toml"
    gateway_config(path, free_port(), fake_openai.base_url, store_url=redis_server.url)
    with_deadline(path, DEADLINE_S)
    yield path


@pytest.mark.parametrize("stream", [False, True], ids=["single", "stream"])
def test_a_deadline_passing_at_the_admission_gate_ends_the_request_with_504(
    config: Path, redis_server: RedisServer, fake_openai: FakeOpenAI, stream: bool
) -> None:
    paused = redis.Redis(port=redis_server.port)

    async def main() -> None:
        async with started(config) as app:
            state = app.state["klawd"]
            store, before, _, key = await warmed(app)
            deployment = state.catalog.get("openai/gpt-fake").key
            # quiet (past QUIET_S): the admission is written at once and the upstream call
            # waits for its reply at the gate, inside the retrier's first try
            await asyncio.sleep(0.001 + 2 * resp.QUIET_S)
            sent = len(fake_openai.requests)
            paused.client_pause(PAUSE_MS, all=True)
            status, answer = await app.request("/v1/chat/completions", chat_body(stream), key)
            assert status == 504, answer
            error = orjson.loads(answer)["error"]
            assert (error["type"], error.get("code")) == ("gateway_timeout", "deadline_exceeded")

            async def settled() -> bool:
                account = await store.get_account(before.id)
                return account is not None and account.credits_micros == before.credits_micros

            await until(settled, "the reservation settled at no cost")
            assert state.retrier.balancer.in_flight(deployment) == 0
            # the deadline passed before the try could leave: not sent (before, it was sent
            # and cut at once: a request the upstream may generate, and bill, for nothing)
            assert len(fake_openai.requests) == sent

    try:
        uvloop.run(asyncio.wait_for(main(), 30))
    finally:
        paused.client_unpause()
        paused.close()
