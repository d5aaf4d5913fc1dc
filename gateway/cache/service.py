"""ResponseCache: the one object a route asks, before admission, whether an answer is cached.

    lookup = await cache.consult(header, account_id, route, models, body)
    if lookup is None: ...               # the request did not ask: the cache plays no part
    elif lookup.answer is not None: ...  # hit: serve it (free, still admitted and logged)
    else: ...call the upstream...; await cache.save(lookup, served, usage, body)

A request asks with `x-klawd-cache`:
- `on`: use the cache when the request is repeatable (gateway/cache/key.py `repeatable`), else
  bypass it;
- `force`: use it even when the request samples without a seed or asks for n > 1 (the client
  accepts the first draw as the answer: tests, evaluations, replays);
- `refresh`: do not read; call the upstream and replace the entry (forced, like `force`);
- `off`: bypass.
Anything else is a 400 naming the header.

The cache never fails a request: a store that cannot be reached (a Redis outage) makes the
lookup a `bypass` and the save a no-op, each logged and counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import orjson
from msgspec import Struct

from gateway.billing import TokenUsage
from gateway.cache.key import cache_key, repeatable, request_meaning
from gateway.errors import InvalidRequest
from gateway.routing.catalog import CatalogEntry
from gateway.settings import CacheSettings
from gateway.store.base import Store, StoreError

if TYPE_CHECKING:
    from gateway.observer import RequestObserver

log = logging.getLogger("klawd.cache")

HEADER = b"x-klawd-cache"
CacheStatus = Literal["hit", "miss", "bypass"]
CacheRoute = Literal["chat", "messages", "responses", "embeddings"]
MODES = frozenset({"on", "force", "refresh", "off"})


class CachedAnswer(Struct, frozen=True, array_like=True):
    """One stored answer: the non-streamed body as served (a stream is stored in that shape
    too), who served it, its usage and when it stops being served."""

    expires_at: float
    model: str  # the catalog id that served
    provider: str
    prompt_tokens: int
    completion_tokens: int
    body: bytes  # JSON

    @property
    def usage(self) -> TokenUsage:
        return TokenUsage(self.prompt_tokens, self.completion_tokens)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CachedAnswer)


class Lookup(Struct):
    route: CacheRoute
    status: CacheStatus
    key: str | None = None  # where a miss's answer is saved; None: not saved
    answer: CachedAnswer | None = None

    def header(self) -> dict[str, str]:
        return {"x-klawd-cache": self.status}


# Entries this process read or wrote are kept in memory this long (and within these bounds), so
# a hot entry costs no store round trip; a `refresh` on another replica is seen within it.
MEMO_TTL_S = 5.0
MEMO_MAX_ENTRIES = 10_000
MEMO_MAX_BYTES = 64 * 1024 * 1024


class ResponseCache:
    def __init__(
        self, settings: CacheSettings, store: Store, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self._store = store
        self._clock = clock
        self._memo: dict[str, tuple[float, CachedAnswer]] = {}  # key -> (kept until, entry)
        self._memo_bytes = 0
        # Cache hits/misses/bypasses in the metrics and the request log; set by create_app.
        self.observer: RequestObserver | None = None

    async def consult(
        self,
        mode: str | None,
        account_id: str,
        route: CacheRoute,
        models: Iterable[str],
        body: bytes,
    ) -> Lookup | None:
        """`mode`: the request's x-klawd-cache header; `models`: the catalog ids the request
        resolved to, in order; `body`: the request's JSON body (already validated)."""
        if mode is None:
            return None
        mode = mode.strip().lower()
        if mode not in MODES:
            raise InvalidRequest(
                "x-klawd-cache must be one of on, force, refresh, off.", param="x-klawd-cache"
            )
        parsed = orjson.loads(body)
        lookup = (
            await self._consult(mode, account_id, route, models, parsed)
            if isinstance(parsed, dict)
            else Lookup(route, "bypass")
        )
        if self.observer is not None:
            self.observer.cache_consulted(route, lookup.status)
        return lookup

    async def _consult(
        self,
        mode: str,
        account_id: str,
        route: CacheRoute,
        models: Iterable[str],
        body: Mapping[str, Any],
    ) -> Lookup:
        if not self.settings.enabled or mode == "off":
            return Lookup(route, "bypass")
        if mode == "on" and not repeatable(route, body):
            return Lookup(route, "bypass")
        key = cache_key(account_id, route, models, request_meaning(route, body))
        if mode == "refresh":
            return Lookup(route, "miss", key)
        now = self._clock()
        kept = self._memo.get(key)
        if kept is not None:
            if kept[0] > now and kept[1].expires_at > now:
                return Lookup(route, "hit", None, kept[1])
            self._forget(key)
        try:
            raw = await self._store.cache_get(key)
        except StoreError as exc:
            log.warning("response cache unavailable, bypassed: %s", exc)
            return Lookup(route, "bypass")
        if raw is not None:
            try:
                answer = _decoder.decode(raw)
            except msgspec.DecodeError:
                answer = None  # written by another version: replaced by this miss's answer
            if answer is not None and answer.expires_at > self._clock():
                self._remember(key, answer)
                return Lookup(route, "hit", None, answer)
        return Lookup(route, "miss", key)

    def _remember(self, key: str, answer: CachedAnswer) -> None:
        self._forget(key)
        if len(self._memo) >= MEMO_MAX_ENTRIES or self._memo_bytes > MEMO_MAX_BYTES:
            self._memo.clear()
            self._memo_bytes = 0
        self._memo[key] = (self._clock() + MEMO_TTL_S, answer)
        self._memo_bytes += len(answer.body)

    def _forget(self, key: str) -> None:
        kept = self._memo.pop(key, None)
        if kept is not None:
            self._memo_bytes -= len(kept[1].body)

    def saver(
        self, lookup: Lookup, served: CatalogEntry
    ) -> Callable[[bytes, TokenUsage], Awaitable[None]]:
        """`save` for a stream's answer, once gathered (gateway/cache/replay.py)."""

        async def save(body: bytes, usage: TokenUsage) -> None:
            await self.save(lookup, served, usage, body)

        return save

    async def save(
        self, lookup: Lookup | None, served: CatalogEntry, usage: TokenUsage, body: bytes
    ) -> None:
        """Stores a miss's answer (`body`: the non-streamed JSON) unless it is larger than
        `max_entry_bytes`; never raises."""
        if lookup is None or lookup.key is None:
            return
        ttl_s = self.settings.ttl_s
        answer = CachedAnswer(
            self._clock() + ttl_s,
            served.model.id,
            served.model.provider,
            usage.prompt_tokens,
            usage.completion_tokens,
            body,
        )
        encoded = _encoder.encode(answer)
        outcome = "stored"
        if len(encoded) > self.settings.max_entry_bytes:
            outcome = "too_large"
        else:
            try:
                await self._store.cache_put(lookup.key, encoded, ttl_s)
            except StoreError as exc:
                log.warning("response cache unavailable, answer not stored: %s", exc)
                outcome = "failed"
            else:
                self._remember(lookup.key, answer)
        if self.observer is not None:
            self.observer.cache_saved(lookup.route, outcome)
