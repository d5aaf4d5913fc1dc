"""The HTTP side of webhook delivery: one aiohttp session, its SSRF-guarded resolver, one POST.

Kept apart from the scheduler (gateway/webhooks/dispatcher.py) so that a worker imports aiohttp
(about 10 MB of its memory) only once it has a delivery to make: the dispatcher loads this
module in a thread at its first delivery, so the event loop does not stall on the import.
"""

from __future__ import annotations

import socket

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from gateway.settings import WebhookSettings
from gateway.webhooks.ssrf import BlockedAddress, check_address

RESPONSE_PREFIX_BYTES = 256  # what is kept of a receiver's answer
# What one attempt may raise that is the receiver's or the network's fault (recorded, retried).
SEND_ERRORS = (aiohttp.ClientError, TimeoutError, BlockedAddress, OSError)


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that refuses a name if any of its addresses is not allowed."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = ThreadedResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            check_address(result["host"], self._allow_private)
        return results

    async def close(self) -> None:
        await self._inner.close()

    def __repr__(self) -> str:
        return f"GuardedResolver(allow_private={self._allow_private})"


class Sender:
    """The delivery session, made at the first POST and closed with the dispatcher."""

    ERRORS = SEND_ERRORS  # for the dispatcher, which does not import this module by name

    def __init__(self, config: WebhookSettings) -> None:
        self._config = config
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(self._config.allow_private_networks),
                use_dns_cache=False,
                limit=self._config.max_concurrency,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self._config.timeout_s),
                auto_decompress=False,
                # Direct, whatever HTTPS_PROXY says: the SSRF guard checks the address that is
                # connected to, which a proxy would hide (docs/decisions/0013).
                trust_env=False,
            )
        return self._session

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """The receiver's status and the first bytes of its answer; raises SEND_ERRORS."""
        async with self._client().post(
            url, data=body, headers=headers, allow_redirects=False
        ) as response:
            return response.status, await response.content.read(RESPONSE_PREFIX_BYTES)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
