"""A loopback aiohttp server on its own event loop in a background thread (for the fakes)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

# A valid 1x1 transparent PNG: what the fake image upstreams serve as a generated image.
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360000002000100e221bc330000000049454e44ae426082"
)


class ThreadedServer:
    """Subclasses add routes in `setup(app)`; every request body is recorded by the handlers."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def setup(self, app: web.Application) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)

    async def _start(self) -> None:
        app = web.Application()
        self.setup(app)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def record(self, request: web.Request, body: Any, **extra: Any) -> None:
        self.requests.append(
            {
                "method": request.method,
                "path": request.path_qs,
                "headers": CIMultiDict(request.headers),  # case-insensitive, as HTTP
                "body": body,
                **extra,
            }
        )

    def last(self, **match: Any) -> dict[str, Any]:
        """The last recorded request whose top-level fields equal `match`."""
        for recorded in reversed(self.requests):
            if all(recorded.get(k) == v for k, v in match.items()):
                return recorded
        raise AssertionError(f"the fake received no request matching {match}")


async def cut_connection(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Drops the TCP connection mid-body (a stream cut off mid-way)."""
    await asyncio.sleep(0.05)
    assert request.transport is not None
    request.transport.close()
    return response
