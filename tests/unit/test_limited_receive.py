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


def test_a_body_that_reached_its_content_length_is_whole_without_the_empty_last_message() -> None:
    """Granian sends a body's pieces with `more_body` true and then an empty last message, a
    round trip of its own: once the Content-Length is there, that message is left unread
    until a later receive() (a stream's disconnect watcher) asks for it."""

    async def main() -> tuple[dict[str, Any], bool, int, bool, dict[str, Any]]:
        server = Server(
            [
                {"type": "http.request", "body": b"ab", "more_body": True},
                {"type": "http.request", "body": b"cd", "more_body": True},
                {"type": "http.request", "body": b"", "more_body": False},
                {"type": "http.disconnect"},
            ]
        )
        receive = LimitedReceive(server.receive, 10, None, declared=4)
        await receive()
        last = await receive()
        asked = len(server.futures)
        after = receive()
        return last, receive.whole, asked, after is server.futures[-1], await after

    last, whole, asked, same, leftover = asyncio.run(main())
    assert last == {"type": "http.request", "body": b"cd", "more_body": False}
    assert whole
    assert asked == 2, "the server's empty last message is not waited for"
    assert same, "then the server's own future, as for any whole body"
    assert leftover == {"type": "http.request", "body": b"", "more_body": False}


def test_without_a_content_length_the_body_ends_with_the_servers_last_message() -> None:
    async def main() -> list[bool]:
        server = Server(
            [
                {"type": "http.request", "body": b"abcd", "more_body": True},
                {"type": "http.request", "body": b"", "more_body": False},
            ]
        )
        receive = LimitedReceive(server.receive, 10, None, declared=None)
        return [bool((await receive())["more_body"]), bool((await receive())["more_body"])]

    assert asyncio.run(main()) == [True, False]
