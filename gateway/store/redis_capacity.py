"""Upstream capacity on Redis: rests and caps shared by every replica (routing/capacity.py).

    klawd:cap:{klawd_capacity}:rests            hash: deployment key -> "<until ms> <f|r>"
    klawd:cap:{klawd_capacity}:rpm:<provider>   token bucket {level, ts} (requests per minute)
    klawd:cap:{klawd_capacity}:tpm:<provider>   token bucket {level, ts} (tokens per minute)

in the library `klawd_capacity` (gateway/store/lua/capacity.lua), apart from the admission
functions. Exact where it must be: a request to a capped provider is chosen by one
`klawd_capacity_take_v1` call over the balancer's order, which skips resting deployments and
takes from the first one under its caps atomically, on Redis time, so replicas together never
send more than a provider's budget. Rests are written at once (`klawd_capacity_rest_v1`); a
model without caps reads them from this process's copy, refreshed from Redis every second in the
background, so its hot path makes no round trip (another replica's 429 is heeded here within a
second; the upstream's own 429 covers that second).

Redis slow or down: a call that takes longer than `CALL_TIMEOUT_S` (0.5 s; the first call,
which loads the functions, the store's 2 s) or fails falls back to this process's own
accounting (MemoryCapacity, the same limits) and logs it, at most every 10 s. Failing open is
deliberate: the upstream enforces its own limits (its 429 still rests the deployment here),
while refusing every request would turn a Redis hiccup into an outage. Replicas may then
together exceed a cap, by at most one budget per replica, until Redis answers again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from gateway.routing.capacity import MemoryCapacity, RestView, Taken, is_capped, token_cost
from gateway.routing.catalog import CatalogEntry
from gateway.store.base import StoreError
from gateway.store.redis import RedisStore

log = logging.getLogger("klawd.capacity")

PREFIX = "klawd:cap:{klawd_capacity}"
RESTS = f"{PREFIX}:rests"
CALL_TIMEOUT_S = 0.5
# Until a first call succeeds (it loads the functions, on every node of a cluster): the store's
# own command timeout.
FIRST_CALL_TIMEOUT_S = 2.0
SYNC_INTERVAL_S = 1.0
WARN_EVERY_S = 10.0


class RedisCapacity:
    def __init__(
        self,
        store: RedisStore,
        clock: Callable[[], float] = time.monotonic,
        sync_interval_s: float = SYNC_INTERVAL_S,
    ) -> None:
        self._store = store
        self._clock = clock
        self._sync_interval_s = sync_interval_s
        # this process's accounting while Redis cannot answer, and its own rests
        self._local = MemoryCapacity(clock)
        # deployment key -> (monotonic time it is back, failing), as Redis last said
        self._shared: dict[str, tuple[float, bool]] = {}
        self._synced_at = -math.inf
        self._sync: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[Any]] = set()
        self._warned_at = -math.inf
        self._answered = False  # a call went through: the functions are loaded

    # -- the local view -------------------------------------------------------------------------
    def _shared_rest(self, key: str) -> tuple[float, bool]:
        entry = self._shared.get(key)
        if entry is None:
            return 0.0, False
        left = entry[0] - self._clock()
        return (left, entry[1]) if left > 0 else (0.0, False)

    def resting_s(self, key: str) -> float:
        return max(self._shared_rest(key)[0], self._local.resting_s(key))

    def rests(self) -> list[RestView]:
        self._maybe_sync()
        merged = {r.key: r for r in self._local.rests()}
        for key in list(self._shared):
            left, failing = self._shared_rest(key)
            if left > 0 and left > (merged[key].resting_s if key in merged else 0.0):
                merged[key] = RestView(key, left, failing)
        return sorted(merged.values(), key=lambda r: r.key)

    def _take_from_view(self, ordered: Sequence[CatalogEntry]) -> Taken:
        earliest: float | None = None
        failing = True
        for deployment in ordered:
            shared, shared_failing = self._shared_rest(deployment.key)
            local = self._local.resting_s(deployment.key)
            wait = max(shared, local)
            if wait <= 0:
                return Taken(deployment)
            failing = failing and (shared_failing if shared >= local else True)
            earliest = wait if earliest is None else min(earliest, wait)
        return Taken(None, earliest or 0.0, failing and earliest is not None)

    # -- Capacity ------------------------------------------------------------------------------
    def take_local(self, ordered: Sequence[CatalogEntry], tokens: int) -> Taken | None:
        self._maybe_sync()
        if len(ordered) == 1:  # one deployment, as most models have (no generator)
            if is_capped(ordered[0].provider):
                return None
            if not self._shared and not self._local.rest_until:
                return Taken(ordered[0])  # nothing rests, as Redis last said nor here
        elif any(is_capped(d.provider) for d in ordered):
            return None
        return self._take_from_view(ordered)

    async def take(self, ordered: Sequence[CatalogEntry], tokens: int) -> Taken:
        local = self.take_local(ordered, tokens)
        if local is not None:
            return local
        keys = [RESTS]
        args: list[Any] = []
        for deployment in ordered:
            provider = deployment.model.provider
            keys += [f"{PREFIX}:rpm:{provider}", f"{PREFIX}:tpm:{provider}"]
            settings = deployment.provider
            args += [
                deployment.key,
                settings.requests_per_minute or 0,
                settings.tokens_per_minute or 0,
                token_cost(settings, tokens),
            ]
        try:
            async with asyncio.timeout(self._budget_s()):
                reply = await self._store.fcall("klawd_capacity_take_v1", keys, args)
        except (StoreError, TimeoutError) as exc:
            self._degraded("take", exc)
            return self._local.take_now(ordered, tokens)
        self._answered = True
        chosen, wait_ms, failing = (int(x) for x in reply)
        if chosen:
            return Taken(ordered[chosen - 1])
        return Taken(None, wait_ms / 1000, bool(failing))

    def settle(self, deployment: CatalogEntry, reserved_tokens: int, used_tokens: int) -> None:
        settings = deployment.provider
        if settings.tokens_per_minute is None:
            return
        delta = token_cost(settings, reserved_tokens) - used_tokens
        if delta == 0:
            return
        self._local.settle(deployment, reserved_tokens, used_tokens)
        key = f"{PREFIX}:tpm:{deployment.model.provider}"
        self._spawn(
            self._call(
                "settle", "klawd_capacity_settle_v1", [key], [settings.tokens_per_minute, delta]
            )
        )

    async def rest(self, key: str, seconds: float, failing: bool = False) -> None:
        self._local.rest_now(key, seconds, failing)
        millis = math.ceil(seconds * 1000)
        await self._call(
            "rest", "klawd_capacity_rest_v1", [RESTS], [key, millis, "f" if failing else "r"]
        )

    async def close(self) -> None:
        tasks = [t for t in (self._sync, *self._pending) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- plumbing -------------------------------------------------------------------------------
    def _maybe_sync(self) -> None:
        if self._clock() - self._synced_at < self._sync_interval_s:
            return
        if self._sync is None or self._sync.done():
            self._synced_at = self._clock()
            self._sync = asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self) -> None:
        reply = await self._call("sync", "klawd_capacity_rests_v1", [RESTS], [])
        if reply is None:
            return
        now = self._clock()
        self._shared = {
            str(reply[i], "utf-8") if isinstance(reply[i], bytes) else str(reply[i]): (
                now + int(reply[i + 1]) / 1000,
                bool(int(reply[i + 2])),
            )
            for i in range(0, len(reply), 3)
        }

    async def _call(self, what: str, function: str, keys: list[str], args: list[Any]) -> Any:
        try:
            async with asyncio.timeout(self._budget_s()):
                reply = await self._store.fcall(function, keys, args)
        except (StoreError, TimeoutError) as exc:
            self._degraded(what, exc)
            return None
        self._answered = True
        return reply

    def _budget_s(self) -> float:
        return CALL_TIMEOUT_S if self._answered else FIRST_CALL_TIMEOUT_S

    def _spawn(self, call: Any) -> None:
        task = asyncio.get_running_loop().create_task(call)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _degraded(self, what: str, exc: Exception) -> None:
        now = self._clock()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning(
                "upstream capacity (%s) falls back to this process's accounting: Redis %s",
                what,
                "timed out" if isinstance(exc, TimeoutError) else "failed",
            )
