"""Admission: an account's rate limits and its credit reservation, decided together.

    Limiter.admit(account, spec, reserve_micros) -> Admission

Admits only if the requests/minute bucket, the requests/day quota, the tokens/minute bucket (not in
debt) and the balance (covers the reservation) all allow; then it consumes from all of them. A
denial consumes nothing. Two implementations share this contract and one test suite:

- EmbeddedLimiter: the Rust limiter (`gateway._core.Limiter`) for the limits and the SQLite store's
  conditional UPDATE for the credits. One process only (settings refuse workers > 1 without Redis).
- RedisLimiter (gateway/store/redis.py): one `FCALL klawd_admit_v1` on Redis server time, exact
  across every worker and replica.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal, Protocol

from msgspec import Struct

from gateway import _core
from gateway.store.base import Store

Outcome = Literal["admitted", "rate_limited", "insufficient_credits"]


class LimitSpec(Struct, frozen=True):
    requests_per_minute: int
    requests_per_day: int
    tokens_per_minute: int | None = None


class Admission(Struct, frozen=True):
    outcome: Outcome
    retry_after_s: float
    limit_requests: int
    remaining_requests: int
    reset_requests_s: float
    limit_requests_day: int
    remaining_requests_day: int
    reserved_micros: int = 0

    @property
    def admitted(self) -> bool:
        return self.outcome == "admitted"

    def headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(self.limit_requests),
            "x-ratelimit-remaining-requests": str(self.remaining_requests),
            "x-ratelimit-reset-requests": f"{math.ceil(self.reset_requests_s)}s",
            "x-ratelimit-limit-requests-day": str(self.limit_requests_day),
            "x-ratelimit-remaining-requests-day": str(self.remaining_requests_day),
        }


class Limiter(Protocol):
    async def admit(self, account_id: str, spec: LimitSpec, reserve_micros: int) -> Admission: ...
    async def peek(self, account_id: str, spec: LimitSpec) -> Admission:
        """Would one more request be admitted, and what is left now (nothing consumed)."""
        ...

    async def charge_tokens(self, account_id: str, spec: LimitSpec, tokens: int) -> None: ...


def bucket_keys(account_id: str) -> tuple[str, str, str]:
    return f"rpm:{account_id}", f"rpd:{account_id}", f"tpm:{account_id}"


class EmbeddedLimiter:
    def __init__(
        self, store: Store, clock: Callable[[], float] = time.time, max_keys: int = 1_000_000
    ) -> None:
        self._core = _core.Limiter(max_keys)
        self._store = store
        self._clock = clock

    def _limits(
        self, account_id: str, spec: LimitSpec, cost: int = 1
    ) -> tuple[list[tuple[str, float, float, float]], list[tuple[str, int, int]]]:
        rpm_key, rpd_key, tpm_key = bucket_keys(account_id)
        rpm = float(spec.requests_per_minute)
        buckets = [(rpm_key, rpm, rpm / 60.0, float(cost))]
        if spec.tokens_per_minute:
            tpm = float(spec.tokens_per_minute)
            buckets.append((tpm_key, tpm, tpm / 60.0, 0.0))
        return buckets, [(rpd_key, spec.requests_per_day, cost)]

    def _admission(
        self, spec: LimitSpec, decision: _core.Decision, outcome: Outcome, reserved: int
    ) -> Admission:
        return Admission(
            outcome=outcome,
            retry_after_s=decision.retry_after_s,
            limit_requests=spec.requests_per_minute,
            remaining_requests=decision.remaining[0],
            reset_requests_s=decision.reset_s[0],
            limit_requests_day=spec.requests_per_day,
            remaining_requests_day=decision.remaining[-1],
            reserved_micros=reserved,
        )

    async def peek(self, account_id: str, spec: LimitSpec) -> Admission:
        """Would one more request be admitted, and what is left now (nothing consumed)."""
        now = self._clock()
        one = self._core.peek(*self._limits(account_id, spec), now)
        left = self._core.peek(*self._limits(account_id, spec, cost=0), now)
        return Admission(
            outcome="admitted" if one.allowed else "rate_limited",
            retry_after_s=one.retry_after_s,
            limit_requests=spec.requests_per_minute,
            remaining_requests=left.remaining[0],
            reset_requests_s=left.reset_s[0],
            limit_requests_day=spec.requests_per_day,
            remaining_requests_day=left.remaining[-1],
        )

    async def admit(self, account_id: str, spec: LimitSpec, reserve_micros: int) -> Admission:
        buckets, quotas = self._limits(account_id, spec)
        first = self._core.peek(buckets, quotas, self._clock())
        if not first.allowed:
            return self._admission(spec, first, "rate_limited", 0)
        if reserve_micros > 0 and not await self._store.reserve_credits(account_id, reserve_micros):
            return self._admission(spec, first, "insufficient_credits", 0)
        # The store call yielded to the event loop: another request may have taken the last
        # token meanwhile, so acquire for real and give the reservation back if that lost.
        decision = self._core.acquire(buckets, quotas, self._clock())
        if not decision.allowed:
            if reserve_micros > 0:
                await self._store.release_credits(account_id, reserve_micros)
            return self._admission(spec, decision, "rate_limited", 0)
        return self._admission(spec, decision, "admitted", reserve_micros)

    async def charge_tokens(self, account_id: str, spec: LimitSpec, tokens: int) -> None:
        if not spec.tokens_per_minute or tokens <= 0:
            return
        tpm = float(spec.tokens_per_minute)
        self._core.charge(bucket_keys(account_id)[2], tpm, tpm / 60.0, float(tokens), self._clock())
