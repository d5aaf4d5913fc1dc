"""The key cache: known and unknown keys remembered for a while, and a flood of made-up keys
does not push the real ones out."""

from __future__ import annotations

import asyncio

import pytest

from gateway.auth import KEY_PREFIX, KeyCache, hash_key
from gateway.errors import AuthenticationError
from gateway.store.base import ApiKey


class CountingStore:
    """Knows one key; counts the lookups."""

    def __init__(self, token: str) -> None:
        self.known = hash_key(token)
        self.lookups = 0

    async def key_by_hash(self, key_hash: str) -> ApiKey | None:
        self.lookups += 1
        if key_hash != self.known:
            return None
        return ApiKey("key_1", "acct_1", "k", KEY_PREFIX, key_hash, 0, None, None)


def test_a_flood_of_unknown_keys_leaves_the_known_ones_cached() -> None:
    token = f"{KEY_PREFIX}real"
    store = CountingStore(token)
    cache = KeyCache(store, ttl_s=60.0, max_entries=100)  # type: ignore[arg-type]

    async def main() -> None:
        await cache.authenticate(f"Bearer {token}", 0)
        for n in range(500):  # past the bound five times over, nothing expired
            with pytest.raises(AuthenticationError):
                await cache.authenticate(f"Bearer {KEY_PREFIX}made-up-{n}", 0)
        before = store.lookups
        for _ in range(10):
            assert (await cache.authenticate(f"Bearer {token}", 0)).key_id == "key_1"
        assert store.lookups == before, "the real key was looked up again"
        assert len(cache._entries) <= 100

    asyncio.run(main())
