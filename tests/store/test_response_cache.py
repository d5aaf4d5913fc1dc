"""The response cache over both stores (SQLite, a real redis-server, a Redis Cluster): hits and
misses, isolation between accounts, refresh, TTL expiry (an injected clock), the size limit, and
a Redis outage that turns the cache into a bypass instead of an error."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from gateway.billing import TokenUsage
from gateway.cache import ResponseCache
from gateway.cache.service import MEMO_TTL_S
from gateway.errors import InvalidRequest
from gateway.routing.catalog import CatalogEntry
from gateway.settings import CacheSettings, ModelSettings, ProviderSettings
from gateway.store.base import Store, open_store
from tests.conftest import free_port
from tests.store.test_store_contract import store_url

SERVED = CatalogEntry(
    ModelSettings(id="openai/gpt-fake", provider="openai"),
    ProviderSettings(kind="openai", base_url="http://127.0.0.1:9/v1"),
    None,
)
MODELS = ["openai/gpt-fake"]
ANSWER = orjson.dumps({"object": "chat.completion", "choices": [{"message": {"content": "hi"}}]})
REQUEST = orjson.dumps({"model": "openai/gpt-fake", "messages": [{"role": "user", "content": "x"}],
                        "temperature": 0})  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    opened = open_store(store_url(request, tmp_path))
    yield opened
    await opened.close()


def cache_over(store: Store, clock: Clock, **settings: object) -> ResponseCache:
    return ResponseCache(CacheSettings(enabled=True, **settings), store, clock)  # type: ignore[arg-type]


async def test_miss_then_hit_returns_the_saved_answer(store: Store) -> None:
    clock = Clock()
    cache = cache_over(store, clock)
    miss = await cache.consult("on", "acct_a", "chat", MODELS, REQUEST)
    assert miss is not None and miss.status == "miss" and miss.answer is None
    await cache.save(miss, SERVED, TokenUsage(12, 4), ANSWER)
    for reader in (cache, cache_over(store, clock)):  # its own memory; another process's store
        hit = await reader.consult("on", "acct_a", "chat", MODELS, REQUEST)
        assert hit is not None and hit.status == "hit" and hit.answer is not None
    hit = await cache_over(store, clock).consult("on", "acct_a", "chat", MODELS, REQUEST)
    assert hit is not None and hit.status == "hit" and hit.answer is not None
    assert hit.answer.body == ANSWER
    assert (hit.answer.model, hit.answer.provider) == ("openai/gpt-fake", "openai")
    assert hit.answer.usage == TokenUsage(12, 4)


async def test_same_meaning_in_another_form_hits(store: Store) -> None:
    cache = cache_over(store, Clock())
    miss = await cache.consult("on", "acct_a", "chat", MODELS, REQUEST)
    await cache.save(miss, SERVED, TokenUsage(1, 1), ANSWER)
    reordered = (
        b'{ "temperature": 0.0, "stream": true, "user": "bob",\n'
        b'  "stream_options": {"include_usage": true},\n'
        b'  "messages": [{"content": "x", "role": "user"}], "model": "openai/gpt-fake" }'
    )
    hit = await cache_over(store, Clock()).consult("on", "acct_a", "chat", MODELS, reordered)
    assert hit is not None and hit.status == "hit"


async def test_entries_are_never_shared_across_accounts(store: Store) -> None:
    cache = cache_over(store, Clock())
    miss = await cache.consult("on", "acct_a", "chat", MODELS, REQUEST)
    await cache.save(miss, SERVED, TokenUsage(1, 1), ANSWER)
    other = await cache.consult("on", "acct_b", "chat", MODELS, REQUEST)
    assert other is not None and other.status == "miss"


async def test_another_model_or_route_is_another_entry(store: Store) -> None:
    cache = cache_over(store, Clock())
    miss = await cache.consult("on", "acct_a", "chat", MODELS, REQUEST)
    await cache.save(miss, SERVED, TokenUsage(1, 1), ANSWER)
    other_model = await cache.consult("on", "acct_a", "chat", ["openai/other"], REQUEST)
    other_route = await cache.consult("on", "acct_a", "messages", MODELS, REQUEST)
    assert other_model is not None and other_model.status == "miss"
    assert other_route is not None and other_route.status == "miss"


async def test_refresh_skips_the_entry_and_replaces_it(store: Store) -> None:
    cache = cache_over(store, Clock())
    first = await cache.consult("on", "acct_a", "chat", MODELS, REQUEST)
    await cache.save(first, SERVED, TokenUsage(1, 1), ANSWER)
    refresh = await cache.consult("refresh", "acct_a", "chat", MODELS, REQUEST)
    assert refresh is not None and refresh.status == "miss" and refresh.answer is None
    newer = orjson.dumps({"object": "chat.completion", "choices": [], "note": "newer"})
    await cache.save(refresh, SERVED, TokenUsage(2, 2), newer)
    for reader in (cache, cache_over(store, Clock())):
        hit = await reader.consult("on", "acct_a", "chat", MODELS, REQUEST)
        assert hit is not None and hit.answer is not None and hit.answer.body == newer


async def test_entries_expire_after_ttl(store: Store) -> None:
    clock = Clock()
    cache = cache_over(store, clock, ttl_s=60.0)
    miss = await cache.consult("on", "acct_a", "chat", MODELS, REQUEST)
    await cache.save(miss, SERVED, TokenUsage(1, 1), ANSWER)
    clock.now += 59
    for reader in (cache, cache_over(store, clock)):
        still = await reader.consult("on", "acct_a", "chat", MODELS, REQUEST)
        assert still is not None and still.status == "hit"
    clock.now += 2
    for reader in (cache, cache_over(store, clock)):
        expired = await reader.consult("on", "acct_a", "chat", MODELS, REQUEST)
        assert expired is not None and expired.status == "miss"


async def test_entries_over_the_size_limit_are_not_stored(store: Store) -> None:
    cache = cache_over(store, Clock(), max_entry_bytes=1024)
    miss = await cache.consult("on", "acct_a", "chat", MODELS, REQUEST)
    big = orjson.dumps({"object": "chat.completion", "text": "x" * 2000})
    await cache.save(miss, SERVED, TokenUsage(1, 1), big)
    for reader in (cache, cache_over(store, Clock())):
        again = await reader.consult("on", "acct_a", "chat", MODELS, REQUEST)
        assert again is not None and again.status == "miss"


async def test_non_repeatable_requests_bypass_unless_forced(store: Store) -> None:
    cache = cache_over(store, Clock())
    sampling = orjson.dumps({"model": "m", "messages": [], "temperature": 0.7})
    several = orjson.dumps({"model": "m", "messages": [], "temperature": 0, "n": 2})
    for body in (sampling, several):
        lookup = await cache.consult("on", "acct_a", "chat", MODELS, body)
        assert lookup is not None and lookup.status == "bypass" and lookup.key is None
        forced = await cache.consult("force", "acct_a", "chat", MODELS, body)
        assert forced is not None and forced.status == "miss" and forced.key is not None
    seeded = orjson.dumps({"model": "m", "messages": [], "temperature": 0.7, "seed": 7})
    lookup = await cache.consult("on", "acct_a", "chat", MODELS, seeded)
    assert lookup is not None and lookup.status == "miss"


async def test_no_header_means_no_cache_and_a_bad_one_is_refused(store: Store) -> None:
    cache = cache_over(store, Clock())
    assert await cache.consult(None, "acct_a", "chat", MODELS, REQUEST) is None
    with pytest.raises(InvalidRequest) as refused:
        await cache.consult("yes please", "acct_a", "chat", MODELS, REQUEST)
    assert refused.value.param == "x-klawd-cache"
    off = await cache.consult("off", "acct_a", "chat", MODELS, REQUEST)
    assert off is not None and off.status == "bypass"


async def test_another_process_sees_a_refresh_once_its_memory_of_the_entry_lapses(
    store: Store,
) -> None:
    clock = Clock()
    writer, other = cache_over(store, clock), cache_over(store, clock)
    first = await writer.consult("on", "acct_a", "chat", MODELS, REQUEST)
    await writer.save(first, SERVED, TokenUsage(1, 1), ANSWER)
    seen = await other.consult("on", "acct_a", "chat", MODELS, REQUEST)
    assert seen is not None and seen.answer is not None and seen.answer.body == ANSWER
    refresh = await writer.consult("refresh", "acct_a", "chat", MODELS, REQUEST)
    newer = orjson.dumps({"object": "chat.completion", "choices": [], "note": "newer"})
    await writer.save(refresh, SERVED, TokenUsage(2, 2), newer)
    clock.now += MEMO_TTL_S + 0.1
    later = await other.consult("on", "acct_a", "chat", MODELS, REQUEST)
    assert later is not None and later.answer is not None and later.answer.body == newer


async def test_a_disabled_cache_is_a_bypass(store: Store) -> None:
    cache = ResponseCache(CacheSettings(enabled=False), store, Clock())
    lookup = await cache.consult("on", "acct_a", "chat", MODELS, REQUEST)
    assert lookup is not None and lookup.status == "bypass" and lookup.key is None


async def test_redis_outage_turns_the_cache_into_a_bypass(tmp_path: Path) -> None:
    """Nothing listens on the port (a stopped Redis): the lookup is a bypass and the save a
    no-op; neither raises (and the suite's timeout bounds both: no hang)."""
    store = open_store(f"redis://127.0.0.1:{free_port()}/0")
    try:
        cache = cache_over(store, Clock())
        lookup = await cache.consult("on", "acct_a", "chat", MODELS, REQUEST)
        assert lookup is not None and lookup.status == "bypass" and lookup.key is None
        forced_refresh = await cache.consult("refresh", "acct_a", "chat", MODELS, REQUEST)
        assert forced_refresh is not None and forced_refresh.key is not None
        await cache.save(forced_refresh, SERVED, TokenUsage(1, 1), ANSWER)  # must not raise
    finally:
        await store.close()
