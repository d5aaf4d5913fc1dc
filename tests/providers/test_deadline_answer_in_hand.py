"""The request's deadline (`[retry] deadline_s`) passing in the very loop turn in which the
upstream's answer is read, against a loopback upstream and the real HTTP client: the deadline
is made due from the connection's read (`DrivenWheel`), not timed.

An answer read whole is served, its connection kept alive; an answer whose body is still to
come is cut (504 `deadline_exceeded`) and its connection dropped, never pooled half-read."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import orjson
import pytest

from gateway.errors import DEADLINE_EXCEEDED, BadGateway, GatewayTimeout
from gateway.providers.base import EmbeddingCall
from gateway.providers.http_client import _Connection
from gateway.providers.openai import OpenAIProvider
from gateway.routing.catalog import CatalogEntry
from gateway.schemas.embeddings import decode_embedding_request
from gateway.settings import ModelSettings, ProviderSettings
from tests.live_bound import running_timeout
from tests.providers.test_http_client import (
    BOUND_S,
    Conn,
    answer,
    observed,
    openai_provider,
    serving,
    upstream_counts,
)
from tests.scrape import parse, total
from tests.unit.test_retry_and_health import SONNET, Clock
from tests.unit.test_retry_deadline import DrivenWheel, retrier
from tests.unit.translation_helpers import chat_call

# The client's own timers (connect, read, headers) are the event loop's, on the wall clock: a
# case that fails in a run this process was stopped in is asked again (tests/asked_again.py).
pytestmark = pytest.mark.asked_again_if_stopped

COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-up",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
)


BODY_ERRORS = "klawd_upstream_body_errors_total"


def embedding_call() -> EmbeddingCall:
    body = orjson.dumps({"model": "p/e", "input": "hi"})
    target = CatalogEntry(
        ModelSettings(id="p/e", provider="p", upstream_model="e"),
        ProviderSettings(kind="openai", base_url="http://upstream.invalid"),
        None,
    )
    return EmbeddingCall(decode_embedding_request(body), body, target)


# The two reads of a non-streamed answer's body: a chat completion's (`complete`), and every
# other JSON answer's (`_send_json`: embeddings here; images, Replicate's polls, Messages).
READS: dict[str, Callable[[OpenAIProvider], Awaitable[object]]] = {
    "complete": lambda provider: provider.complete(chat_call("openai", "m")),
    "send_json": lambda provider: provider.embed(embedding_call()),
}


def deadline_due_on_read(monkeypatch: pytest.MonkeyPatch, wheel: DrivenWheel) -> None:
    """Each read of an upstream connection is followed, in the same callback, by the wheel's
    run: the deadline passes right after the answer's bytes were read, before the try's task
    has resumed to take them."""
    read = _Connection.data_received

    def read_then_deadline(conn: _Connection, data: bytes) -> None:
        read(conn, data)
        wheel.run()

    monkeypatch.setattr(_Connection, "data_received", read_then_deadline)


async def test_an_answer_read_whole_in_the_deadline_s_turn_is_served_and_kept_alive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def handler(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.send(answer(COMPLETION, "Content-Type: application/json"))

    async with running_timeout(BOUND_S), serving(handler) as server:
        provider = openai_provider(server.url(""))
        retrier_ = retrier(Clock(), 30)
        wheel = retrier_._cuts = DrivenWheel(asyncio.get_running_loop())  # type: ignore[assignment]
        deadline_due_on_read(monkeypatch, wheel)

        def attempt(target: CatalogEntry) -> object:
            return provider.complete(chat_call("openai", "m"))

        try:
            for _ in range(2):
                completion, _, _ = await retrier_.call_targets([SONNET], attempt)  # type: ignore[arg-type]
                assert completion.body["choices"][0]["message"]["content"] == "hi"  # type: ignore[attr-defined]
        finally:
            await provider.close()
    assert server.accepted == 1, "the answer was read whole: its connection was kept alive"


@pytest.mark.parametrize("read", list(READS))
async def test_an_answer_whose_body_is_still_to_come_is_cut_and_its_connection_dropped(
    monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    closed = asyncio.Event()

    async def handler(conn: Conn) -> None:
        if await conn.request() is None:
            return
        # the head, and not the body it announces
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        await conn.wait_closed_by_peer()
        closed.set()

    async with running_timeout(BOUND_S), serving(handler) as server:
        provider = openai_provider(server.url(""))
        metrics = observed(provider)
        retrier_ = retrier(Clock(), 30)
        wheel = retrier_._cuts = DrivenWheel(asyncio.get_running_loop())  # type: ignore[assignment]
        deadline_due_on_read(monkeypatch, wheel)

        def attempt(target: CatalogEntry) -> object:
            return READS[read](provider)

        try:
            with pytest.raises(GatewayTimeout) as raised:
                await retrier_.call_targets([SONNET], attempt)  # type: ignore[arg-type]
            assert raised.value.code == DEADLINE_EXCEEDED
            await closed.wait()  # the client dropped the half-read connection
        finally:
            await provider.close()
    assert server.accepted == 1
    # its headers came (their latency observed), its body was cut: not an answer the client got
    assert upstream_counts(metrics) == {"answered": 1, "errors": 0, "body_errors": 1}
    samples = parse(metrics.exposition().decode())
    assert total(samples, BODY_ERRORS, provider="p", type="gateway_timeout") == 1


@pytest.mark.parametrize("read", list(READS))
async def test_a_body_broken_off_is_counted_a_body_error(read: str) -> None:
    """The same count for a body the upstream broke off (no deadline): a 502 the client gets,
    its headers' latency observed."""

    async def handler(conn: Conn) -> None:
        if await conn.request() is None:
            return
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
        conn.reset()

    async with running_timeout(BOUND_S), serving(handler) as server:
        provider = openai_provider(server.url(""))
        metrics = observed(provider)
        try:
            with pytest.raises(BadGateway):
                await READS[read](provider)
        finally:
            await provider.close()
    assert upstream_counts(metrics) == {"answered": 1, "errors": 0, "body_errors": 1}
    samples = parse(metrics.exposition().decode())
    assert total(samples, BODY_ERRORS, provider="p", type="bad_gateway") == 1
