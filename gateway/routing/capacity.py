"""Upstream capacity: which deployments may be sent a request now (rests and caps).

Two things keep a deployment from being chosen:

- a **rest**: an upstream 429 rests the deployment until its `Retry-After` (or
  `x-ratelimit-reset-*`); a circuit that opens (routing/health.py) rests it `cooldown_s`;
- a **cap**: its provider's `requests_per_minute` / `tokens_per_minute` (that key's own upstream
  limits), kept as token buckets like the upstreams keep them (capacity = the per-minute limit,
  refilled continuously). The gateway counts what it sends: one request, and the request's token
  estimate, taken when a deployment is chosen; the tokens are settled to the actual usage when
  the request ends (a bucket may go below zero when the estimate was low: later requests wait).
  A request whose estimate exceeds the whole per-minute budget needs a full bucket.

`take(ordered, tokens)` walks the balancer's order and takes from the first deployment that is
neither resting nor capped, in one step (on Redis: one atomic function call over the shared
state of every replica, gateway/store/redis_capacity.py). When none can serve it says when the
earliest one is back (the 429 `upstream_capacity`'s Retry-After).

This module is the in-process version: the embedded store's, and what the Redis one falls back to
while Redis cannot answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from msgspec import Struct

from gateway.routing.catalog import CatalogEntry
from gateway.settings import ProviderSettings

SECONDS_PER_MINUTE = 60.0


class Taken(Struct, frozen=True):
    """The deployment chosen, or None with the seconds until the earliest one is back and
    whether every one was resting because it failed (an open circuit: 503, not a 429)."""

    deployment: CatalogEntry | None
    back_in_s: float = 0.0
    failing: bool = False


class RestView(Struct, frozen=True):
    key: str
    resting_s: float
    failing: bool


def is_capped(provider: ProviderSettings) -> bool:
    return provider.requests_per_minute is not None or provider.tokens_per_minute is not None


def token_cost(provider: ProviderSettings, tokens: int) -> int:
    """What a request takes from the provider's token bucket: its estimate, at most the budget."""
    cap = provider.tokens_per_minute
    return 0 if cap is None else min(tokens, cap)


class Capacity(Protocol):
    def resting_s(self, key: str) -> float:
        """Seconds until the deployment may be chosen again (0: now), as this process knows it
        (on Redis refreshed every second, and exact at `take` for capped providers)."""
        ...

    def take_local(self, ordered: Sequence[CatalogEntry], tokens: int) -> Taken | None:
        """`take` when this process can answer alone (no await); None when only the shared
        state can (a capped provider on Redis)."""
        ...

    async def take(self, ordered: Sequence[CatalogEntry], tokens: int) -> Taken: ...

    def settle(self, deployment: CatalogEntry, reserved_tokens: int, used_tokens: int) -> None:
        """The request's actual tokens replace its estimate (never awaits)."""
        ...

    async def rest(self, key: str, seconds: float, failing: bool = False) -> None:
        """`failing`: its circuit opened (else an upstream 429 asked for the rest)."""
        ...

    def rests(self) -> list[RestView]: ...

    async def close(self) -> None: ...


class _Bucket:
    __slots__ = ("capacity", "level", "updated")

    def __init__(self, capacity: int, now: float) -> None:
        self.capacity = capacity
        self.level = float(capacity)
        self.updated = now

    def refill(self, now: float) -> float:
        elapsed = max(0.0, now - self.updated)
        self.level = min(self.capacity, self.level + elapsed * self.capacity / SECONDS_PER_MINUTE)
        self.updated = now
        return self.level

    def wait_s(self, cost: float) -> float:
        return max(0.0, (cost - self.level) * SECONDS_PER_MINUTE / self.capacity)


class MemoryCapacity:
    """Rests and caps of this process (the embedded store: one process serves)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # deployment key -> when its rest ends (read by RedisCapacity's view: nothing rests)
        self.rest_until: dict[str, float] = {}
        self._failing: set[str] = set()  # the rests of open circuits (not asked for by a 429)
        self._requests: dict[str, _Bucket] = {}  # by provider name
        self._tokens: dict[str, _Bucket] = {}

    def resting_s(self, key: str) -> float:
        until = self.rest_until.get(key)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self.rest_until[key]
            self._failing.discard(key)
            return 0.0
        return left

    async def take(self, ordered: Sequence[CatalogEntry], tokens: int) -> Taken:
        return self.take_now(ordered, tokens)

    def take_now(self, ordered: Sequence[CatalogEntry], tokens: int) -> Taken:
        if not self.rest_until and ordered and not is_capped(ordered[0].provider):
            return Taken(ordered[0])  # nothing rests, the first is uncapped: the common case
        now = self._clock()
        earliest: float | None = None
        failing = True
        for deployment in ordered:
            wait = self.resting_s(deployment.key)
            if wait > 0:
                failing = failing and deployment.key in self._failing
            elif is_capped(deployment.provider):
                wait = self._cap_wait(deployment, tokens, now)
                failing = failing and wait <= 0
            if wait <= 0:
                self._charge(deployment, tokens, now)
                return Taken(deployment)
            earliest = wait if earliest is None else min(earliest, wait)
        return Taken(None, earliest or 0.0, failing and earliest is not None)

    take_local = take_now  # this process always answers alone (one call less per request)

    def _buckets(self, deployment: CatalogEntry, now: float) -> tuple[_Bucket | None, ...]:
        name, settings = deployment.model.provider, deployment.provider
        buckets: list[_Bucket | None] = []
        for limit, table in (
            (settings.requests_per_minute, self._requests),
            (settings.tokens_per_minute, self._tokens),
        ):
            if limit is None:
                buckets.append(None)
                continue
            bucket = table.get(name)
            if bucket is None or bucket.capacity != limit:
                bucket = table[name] = _Bucket(limit, now)
            buckets.append(bucket)
        return tuple(buckets)

    def _cap_wait(self, deployment: CatalogEntry, tokens: int, now: float) -> float:
        requests, token_bucket = self._buckets(deployment, now)
        wait = 0.0
        if requests is not None and requests.refill(now) < 1:
            wait = requests.wait_s(1)
        cost = token_cost(deployment.provider, tokens)
        if token_bucket is not None and token_bucket.refill(now) < cost:
            wait = max(wait, token_bucket.wait_s(cost))
        return wait

    def _charge(self, deployment: CatalogEntry, tokens: int, now: float) -> None:
        if not is_capped(deployment.provider):
            return
        requests, token_bucket = self._buckets(deployment, now)
        if requests is not None:
            requests.level -= 1
        if token_bucket is not None:
            token_bucket.level -= token_cost(deployment.provider, tokens)

    def settle(self, deployment: CatalogEntry, reserved_tokens: int, used_tokens: int) -> None:
        bucket = self._tokens.get(deployment.model.provider)
        if bucket is None or deployment.provider.tokens_per_minute is None:
            return
        reserved = token_cost(deployment.provider, reserved_tokens)
        bucket.refill(self._clock())
        bucket.level = min(bucket.capacity, bucket.level + reserved - used_tokens)

    async def rest(self, key: str, seconds: float, failing: bool = False) -> None:
        self.rest_now(key, seconds, failing)

    def rest_now(self, key: str, seconds: float, failing: bool = False) -> None:
        until = self._clock() + seconds
        if until > self.rest_until.get(key, 0.0):
            self.rest_until[key] = until
            if failing:
                self._failing.add(key)
            else:
                self._failing.discard(key)

    def rests(self) -> list[RestView]:
        views = [
            RestView(key, self.resting_s(key), key in self._failing)
            for key in list(self.rest_until)
        ]
        return [v for v in views if v.resting_s > 0]

    async def close(self) -> None:
        return None
