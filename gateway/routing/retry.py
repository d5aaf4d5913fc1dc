"""Retries of one target, then the next target: shared by every provider, naming none.

    result, target, tries = await call_targets(targets, attempt, policies, health)

For each target in order (skipping open circuits): up to `attempts` tries. A failure marked
`retryable` (connect errors, timeouts before the first byte, 429, 500, 502, 503, 504) sleeps
U(0, min(max_delay_s, base_delay_s * 2^n)) — full jitter — or the upstream's Retry-After when it
is longer, then tries again; a Retry-After above `max_retry_after_s` is not waited for: the next
target is tried at once. Other upstream failures (a nonsense answer, the upstream refusing our
key) skip to the next target. Client errors (400, 413, …) end the call at once. Everything here
happens before the first byte reaches the client; nothing is retried after it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from msgspec import Struct

from gateway.errors import (
    BadGateway,
    GatewayError,
    GatewayTimeout,
    RateLimited,
    ServiceUnavailable,
)
from gateway.requestlog import current_request
from gateway.routing.catalog import CatalogEntry
from gateway.routing.health import Health
from gateway.settings import RetrySettings

if TYPE_CHECKING:
    from gateway.observer import RequestObserver
    from gateway.tracing import Tracing

T = TypeVar("T")

# Upstream failures after which the next target (a route's, or a model's fallback) is tried.
FALLBACK_ON = (ServiceUnavailable, RateLimited, GatewayTimeout, BadGateway)


class Attempt(Struct, frozen=True):
    model: str
    error: str | None  # the gateway error type of a failed try, None for the one that served
    slept_s: float


def backoff_delay(retry: int, policy: RetrySettings, rng: random.Random) -> float:
    """Full jitter: U(0, min(cap, base * 2^retry)) for the retry-th retry (0-based)."""
    return rng.uniform(0.0, min(policy.max_delay_s, policy.base_delay_s * (2**retry)))


class Retrier:
    def __init__(
        self,
        policy_for: Callable[[CatalogEntry], RetrySettings],
        health: Health,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy_for = policy_for
        self._health = health
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not secrets)
        self._sleep = sleep
        self._clock = clock
        # Retry and fallback counters (gateway/observer.py); set by create_app.
        self.observer: RequestObserver | None = None
        # Traces on: a client span per attempt (gateway/tracing/); set by create_app.
        self.tracing: Tracing | None = None

    async def call_targets(
        self,
        targets: list[CatalogEntry],
        attempt: Callable[[CatalogEntry], Awaitable[T]],
        may_retry: Callable[[GatewayError], bool] = lambda exc: exc.retryable,
        may_fall_back: Callable[[GatewayError], bool] = lambda exc: True,
    ) -> tuple[T, CatalogEntry, list[Attempt]]:
        """`may_retry` / `may_fall_back` narrow what is tried again: image generation passes
        "only after a connect error" for both, as the upstream may have generated already."""
        tries: list[Attempt] = []
        last_error: GatewayError | None = None
        candidates = [t for t in targets if self._health.allows(t.model.id)]
        if not candidates:
            raise ServiceUnavailable(
                "Every model that could serve this request is failing right now (circuit open).",
                retry_after_s=min(self._health.reopens_in(t.model.id) for t in targets),
            )
        for index, target in enumerate(candidates):
            if index and self.observer is not None:
                self.observer.fell_back(candidates[index - 1].model.provider)
            policy = self._policy_for(target)
            slept = 0.0
            target_started = self._clock()
            for retry in range(policy.attempts):
                started = self._clock()
                try:
                    if self.tracing is None:
                        result = await attempt(target)
                    else:
                        result = await self._traced(self.tracing, attempt, target, len(tries))
                except FALLBACK_ON as exc:
                    tries.append(Attempt(target.model.id, exc.type, slept))
                    last_error = exc
                    gives_up = (
                        retry + 1 >= policy.attempts
                        or not may_retry(exc)
                        or (
                            exc.retry_after_s is not None
                            and exc.retry_after_s > policy.max_retry_after_s
                        )
                    )
                    if gives_up:
                        # The circuit counts what a target did for a request (served it or
                        # not), not each try: a flaky upstream that answers on the second try
                        # is slow, not down.
                        self._health.record(
                            target.model.id, ok=False, latency_s=self._clock() - target_started
                        )
                        if not may_fall_back(exc):
                            raise
                        break
                    delay = backoff_delay(retry, policy, self._rng)
                    if exc.retry_after_s is not None:
                        delay = max(delay, exc.retry_after_s)
                    if self.observer is not None:
                        self.observer.retried(target.model.provider)
                    await self._sleep(delay)
                    slept = delay
                    continue
                self._health.record(target.model.id, ok=True, latency_s=self._clock() - started)
                tries.append(Attempt(target.model.id, None, slept))
                return result, target, tries
        assert last_error is not None  # noqa: S101 (the loop ran at least once and failed)
        raise last_error

    @staticmethod
    async def _traced(
        tracing: Tracing,
        attempt: Callable[[CatalogEntry], Awaitable[T]],
        target: CatalogEntry,
        number: int,
    ) -> T:
        """One attempt inside its client span (errors: the gateway error type as status)."""
        record = current_request.get()
        if record is None:
            return await attempt(target)
        span = tracing.start_attempt(record, target, number)
        try:
            result = await attempt(target)
        except GatewayError as exc:
            tracing.end_attempt(record, span, exc.type)
            raise
        except BaseException as exc:
            tracing.end_attempt(record, span, type(exc).__name__)
            raise
        tracing.end_attempt(record, span, None)
        return result
