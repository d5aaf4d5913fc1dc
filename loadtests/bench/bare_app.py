"""The bare pass-through: a plain ASGI callable on Granian with one aiohttp session, no logic.

The same relay as floor_app.py without Starlette: forwards every POST to the same path on
$BENCH_UPSTREAM and relays the answer, event streams chunk by chunk as they arrive (one send per
read), anything else read whole. It is the leanest pass-through the stack allows, and the
gateway's target is to be at least as fast while doing all its work.

    BENCH_UPSTREAM=http://127.0.0.1:9000 granian --interface asgi --loop uvloop \\
        loadtests.bench.bare_app:app
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp

Scope = dict[str, Any]
Message = dict[str, Any]


class BareRelay:
    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None
        self.upstream = os.environ.get("BENCH_UPSTREAM", "")

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        assert self.session is not None
        upstream = await self.session.post(
            self.upstream + scope["path"], data=body, headers={"content-type": "application/json"}
        )
        media_type = upstream.headers.get("content-type", "application/json")
        headers = [(b"content-type", media_type.encode())]
        if not media_type.startswith("text/event-stream"):
            answer = await upstream.read()
            upstream.release()
            headers.append((b"content-length", str(len(answer)).encode()))
            await send({"type": "http.response.start", "status": upstream.status,
                        "headers": headers})  # fmt: skip
            await send({"type": "http.response.body", "body": answer})
            return
        await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
        try:
            async for chunk in upstream.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            upstream.close()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


app = BareRelay()
