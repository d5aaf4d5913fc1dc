"""The bare pass-through over Granian's own interface, RSGI: bare_app.py's work, nothing else.

The same relay as bare_app.py (one aiohttp session, every POST forwarded to the same path on
$BENCH_UPSTREAM, event streams relayed chunk by chunk as they arrive: one write per read, anything
else read whole), written through RSGI's protocol object instead of ASGI messages: the request
body in one `await proto()`, a whole answer with `proto.response_bytes`, a stream with
`proto.response_stream` and one `send_bytes` per read. It measures what the server interface
costs the floor (issue 19ze); it is informational, the targets stay against bare_app.py.

    BENCH_UPSTREAM=http://127.0.0.1:9000 granian --interface rsgi --loop uvloop \\
        loadtests.bench.bare_rsgi_app:app
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp


class BareRsgiRelay:
    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None
        self.upstream = os.environ.get("BENCH_UPSTREAM", "")

    # RSGI has no lifespan messages: Granian calls these on the worker's loop before it serves
    # and after it stopped (the loop not running yet, or no longer).
    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        async def start() -> aiohttp.ClientSession:
            return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

        self.session = loop.run_until_complete(start())

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.session is not None:
            loop.run_until_complete(self.session.close())

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        body = await proto()
        assert self.session is not None
        upstream = await self.session.post(
            self.upstream + scope.path, data=body, headers={"content-type": "application/json"}
        )
        media_type = upstream.headers.get("content-type", "application/json")
        headers = [("content-type", media_type)]
        if not media_type.startswith("text/event-stream"):
            answer = await upstream.read()
            upstream.release()
            headers.append(("content-length", str(len(answer))))
            proto.response_bytes(upstream.status, headers, answer)
            return
        transport = proto.response_stream(upstream.status, headers)
        try:
            async for chunk in upstream.content.iter_any():
                await transport.send_bytes(chunk)
        finally:
            upstream.close()


app = BareRsgiRelay()
