"""The middleware's receive: the body-size limit while the body arrives, then the server's own
receive() (Granian's future, which a stream watches for the disconnect without a task)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.api.middleware import LimitedReceive
from gateway.errors import RequestTooLarge
from gateway.requestlog import BodyCapture


class Server:
    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.messages = messages
        self.futures: list[asyncio.Future[dict[str, Any]]] = []

    def receive(self) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        future.set_result(self.messages.pop(0))
        self.futures.append(future)
        return future


def test_once_the_body_is_whole_the_servers_own_future_is_handed_out() -> None:
    async def main() -> tuple[bool, bool, dict[str, Any]]:
        server = Server(
            [
                {"type": "http.request", "body": b"ab", "more_body": True},
                {"type": "http.request", "body": b"cd", "more_body": False},
                {"type": "http.disconnect"},
            ]
        )
        receive = LimitedReceive(server.receive, 10, None)
        await receive()
        whole_after_first = receive.whole
        await receive()
        after = receive()
        return whole_after_first, after is server.futures[-1], await after

    whole_after_first, same, message = asyncio.run(main())
    assert not whole_after_first
    assert same, "no coroutine around the server's future once the body is whole"
    assert message == {"type": "http.disconnect"}


def test_a_body_over_the_limit_is_refused_while_it_arrives() -> None:
    async def main() -> None:
        server = Server(
            [
                {"type": "http.request", "body": b"x" * 6, "more_body": True},
                {"type": "http.request", "body": b"x" * 6, "more_body": False},
            ]
        )
        receive = LimitedReceive(server.receive, 10, None)
        await receive()
        with pytest.raises(RequestTooLarge, match="limit of 10 bytes"):
            await receive()

    asyncio.run(main())


def test_the_body_is_captured_for_the_log_while_it_arrives() -> None:
    async def main() -> BodyCapture:
        capture = BodyCapture(100)
        server = Server([{"type": "http.request", "body": b"hello", "more_body": False}])
        receive = LimitedReceive(server.receive, 10, capture)
        await receive()
        return capture

    capture = asyncio.run(main())
    assert bytes(capture.request.kept) == b"hello"
