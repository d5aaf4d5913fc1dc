"""A TCP relay on a free loopback port in front of a redis-server, run in the test's own event
loop: the bytes pass as they come, both ways, until the test tells it to swallow the client's
(`swallow_requests`: nothing reaches Redis, nothing comes back) or Redis's (`swallow_replies`:
the commands run, their replies never come). What a store's client sees is a real connection
that goes silent, as when a network drops packets."""

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

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the relay is not started")
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)

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
        for pipe in (
            self._pipe(client, to_redis, lambda: self.swallow_requests),
            self._pipe(redis, to_client, lambda: self.swallow_replies),
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
