"""A webhook receiver on loopback: records every delivery (raw body, headers) and answers with
a scripted status per path (e.g. 500, 500, then 200)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.server import ThreadedServer


def verify(raw_body: bytes, signature: str, secret: str) -> bool:
    """The seed's documented receiver check, re-implemented: lowercase hex HMAC-SHA256 of the raw
    body with the secret, compared in constant time."""
    expected = hmac.new(secret.encode(), raw_body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


class WebhookReceiver(ThreadedServer):
    def __init__(self) -> None:
        super().__init__()
        # path -> statuses to answer, then 200; 0 = hold the request 1.5 s without answering
        self.scripts: dict[str, list[int]] = {}

    def setup(self, app: web.Application) -> None:
        app.router.add_post("/{path:.*}", self.receive)
        app.router.add_get("/{path:.*}", self.receive)

    async def receive(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.record(request, raw, at=time.time())
        script = self.scripts.get(request.path)
        status = script.pop(0) if script else 200
        if status == 0:
            await asyncio.sleep(1.5)
        if status in (301, 302, 307, 308):
            raise (
                web.HTTPFound("/redirected")
                if status == 302
                else web.HTTPTemporaryRedirect("/redirected")
            )
        return web.Response(status=status, text=f"answer {status} " + "x" * 2000)

    def deliveries(self, path: str) -> list[dict[str, Any]]:
        """The POSTs to `path`, each with its decoded event."""
        return [
            {**r, "event": orjson.loads(r["body"])}
            for r in list(self.requests)
            if r["path"] == path and r["method"] == "POST"
        ]
