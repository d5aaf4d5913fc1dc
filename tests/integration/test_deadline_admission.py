"""`[retry] deadline_s` while the request's own admission is still on its way (Redis): the
upstream call waits for the admission's reply at its first try (gateway/admission_gate.py), and
that wait is the deadline's like any other: a store that does not answer holds the request no
longer than its deadline. When the deadline passes there, the request ends with 504
`deadline_exceeded` at once, nothing is sent upstream, and what the admission took is given back
when its reply comes (ledger status 504, the reservation settled at no cost, the log line's
status the ledger's). Before, the wait was outside the cut: the request waited for the reply
(until the store's command timeout, 2 s by default, then a 503), whatever its deadline.

Nothing here is timed. The app runs in process on the suite's real redis-server, the store's
command timeout raised out of the way (`socket_timeout`); the test pauses the server's writes
(`CLIENT PAUSE ... WRITE`: the admission's `FCALL` is held, and the test can lift the pause
early, which it cannot under `ALL`) and makes the deadline due itself (`DrivenWheel`), once the
request waits with its cut armed; it lifts the pause after the 504."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import uvloop

from gateway.store import resp
from tests.conftest import free_port, gateway_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.integration.test_cancelled_admission import chat_body, until, warmed
from tests.integration.test_request_deadline import with_deadline
from tests.integration.test_request_log_status import Seen
from tests.integration.test_streams_freed import started
from tests.live_bound import within
from tests.redis_server import RedisServer
from tests.unit.test_retry_deadline import DrivenWheel

PAUSE_MS = 60_000  # lifted by the test; this only bounds a test that dies holding it
NUMBERS = itertools.count()
IMAGES = """
[[models]]
id = "openai/img-fake"
provider = "openai"
upstream_model = "img-fake"
kind = "image"
usd_per_image = 0.04
capabilities = ["images"]
"""
# Each route whose admission the first try may wait for: (path, body, the model it serves).
REQUESTS = {
    "single": ("/v1/chat/completions", chat_body(False), "openai/gpt-fake"),
    "stream": ("/v1/chat/completions", chat_body(True), "openai/gpt-fake"),
    "image": (
        "/v1/images/generations",
        orjson.dumps({"model": "openai/img-fake", "prompt": "a cat"}),
        "openai/img-fake",
    ),
}


@pytest.fixture(scope="module")
def config(
    tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAI, redis_server: RedisServer
) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("deadline-admission") / "klawd.toml"
    # the store's command timeout well past the test's bounds: only the deadline can end the wait
    store_url = f"{redis_server.url}?socket_timeout=60"
    gateway_config(path, free_port(), fake_openai.base_url, extra=IMAGES, store_url=store_url)
    with_deadline(path, 30)  # made due by the test, never reached
    yield path


@pytest.mark.parametrize("kind", list(REQUESTS))
def test_a_deadline_passing_while_the_admission_is_owed_ends_the_request_with_504(
    config: Path,
    redis_server: RedisServer,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    """An image's too (before, its route awaited the whole admission before its retry loop,
    outside the deadline: it waited as long as the store did)."""
    route, body, model = REQUESTS[kind]
    paused = redis.Redis(port=redis_server.port)
    # Every command written at once to an idle connection (not queued with a busy loop turn's,
    # where `Meter.start` reads the reply before the retry loop, and its deadline, begin).
    monkeypatch.setattr(resp, "QUIET_S", 0.0)
    request_id = f"req_deadline_admission_{next(NUMBERS)}"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with started(config) as app:
            state = app.state["klawd"]
            store, before, _, key = await warmed(app)
            seen = Seen(app)
            deployment = state.catalog.get(model).key
            sends: list[tuple[asyncio.Future[Any], bool]] = []
            send_admit = state.meter.sender.send_admit

            def sent_admit(*args: Any) -> Any:
                sent = send_admit(*args)
                sends.append(sent)
                return sent

            state.meter.sender.send_admit = sent_admit
            wheel = state.retrier._cuts = DrivenWheel(loop)
            upstream_requests = len(fake_openai.requests)
            paused.client_pause(PAUSE_MS, all=False)
            try:
                call = asyncio.ensure_future(app.request(route, body, key, "", request_id))

                async def cut_armed() -> bool:
                    assert not call.done(), call.result()
                    return bool(wheel.slots)

                # the request waits for its admission's reply, with its deadline's cut armed
                await until(cut_armed, "the deadline's cut armed while the admission is owed")
                [(reply, at_once)] = sends
                assert at_once, "the admission was queued: not the path under test"
                assert not reply.done(), "the admission was answered under the pause"
                wheel.run()  # the deadline passes
                status, answer = await call
                assert reply.cancelled(), "the request waited for the admission's reply"
            finally:
                paused.client_unpause()
                if not call.done():  # (failing: the request not left waiting at the shutdown)
                    app.requests[-1].cancel()
            assert status == 504, answer
            error = orjson.loads(answer)["error"]
            assert (error["type"], error.get("code")) == ("gateway_timeout", "deadline_exceeded")

            async def given_back() -> bool:
                account = await store.get_account(before.id)
                return (
                    request_id in seen.lines
                    and account is not None
                    and account.credits_micros == before.credits_micros
                )

            await until(given_back, "the reservation settled at no cost, the line written")
            assert seen.ledger[request_id] == 504
            assert seen.lines[request_id]["status"] == 504
            assert state.retrier.balancer.in_flight(deployment) == 0
            # the deadline passed before the try could leave: nothing sent upstream
            assert len(fake_openai.requests) == upstream_requests

    try:
        uvloop.run(within(main(), 30))
    finally:
        paused.client_unpause()
        paused.close()
