"""The stack floor: Starlette on Granian with one aiohttp session and no logic.

Forwards every POST to the same path on $BENCH_UPSTREAM and relays the answer: event streams
chunk by chunk as they arrive, anything else read whole. What the gateway costs beyond this is
the cost of its logic (auth, limits, billing, metrics, logs, reframing).

    BENCH_UPSTREAM=http://127.0.0.1:9000 granian --interface asgi --loop uvloop \\
        loadtests.bench.floor_app:app
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


async def relay(request: Request) -> Response:
    session: aiohttp.ClientSession = request.state.session
    upstream = await session.post(
        f"{request.state.upstream}{request.url.path}",
        data=await request.body(),
        headers={"content-type": "application/json"},
    )
    media_type = upstream.headers.get("content-type", "application/json")
    if not media_type.startswith("text/event-stream"):
        body = await upstream.read()
        upstream.release()
        return Response(body, upstream.status, media_type=media_type)

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.content.iter_any():
                yield chunk
        finally:
            upstream.close()

    return StreamingResponse(chunks(), upstream.status, media_type=media_type)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield {"session": session, "upstream": os.environ["BENCH_UPSTREAM"]}


app = Starlette(routes=[Route("/{path:path}", relay, methods=["POST"])], lifespan=lifespan)
