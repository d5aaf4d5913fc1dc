"""A TCP relay on a free loopback port in front of a redis-server, run in the test's own event
loop: the bytes pass as they come, both ways, until the test tells it to swallow the client's
(`swallow_requests`: nothing reaches Redis, nothing comes back) or Redis's (`swallow_replies`:
the commands run, their replies never come), or to silence the connections it carries so far
(`go_silent`: connections made afterwards are carried). What a store's client sees is a real
connection that goes silent, as when a network drops packets or a NAT forgets a connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class RedisRelay:
    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.swallow_requests = False
        self.swallow_replies = False
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._carried: list[asyncio.StreamWriter] = []  # each connection's writer to its client
        self._silent: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the relay is not started")
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self.url

    def go_silent(self) -> None:
        """The connections carried so far fall silent both ways: nothing forwarded, nothing
        closed (a connection dead without a word). Connections made afterwards are carried."""
        self._silent.update(self._carried)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _relay(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        try:
            redis, to_redis = await asyncio.open_connection("127.0.0.1", self.redis_port)
        except OSError:
            to_client.close()
            return
        self._carried.append(to_client)
        silent = self._silent
        for pipe in (
            self._pipe(client, to_redis, lambda: self.swallow_requests or to_client in silent),
            self._pipe(redis, to_client, lambda: self.swallow_replies or to_client in silent),
        ):
            task = asyncio.ensure_future(pipe)
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(
        source: asyncio.StreamReader, sink: asyncio.StreamWriter, swallowing: Callable[[], bool]
    ) -> None:
        try:
            while data := await source.read(65536):
                if not swallowing():
                    sink.write(data)
                    await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.close()
            with contextlib.suppress(ConnectionError, OSError):
                await sink.wait_closed()
