"""Admission: an account's rate limits and its credit reservation, decided together.

    Limiter.admit(account, spec, reserve_micros) -> Admission

Admits only if the requests/minute bucket, the requests/day quota, the tokens/minute bucket (not in
debt) and the balance (covers the reservation) all allow, and, for the API key (KeyGate), its own
requests/minute and requests/day and its budgets per day, month and in total (spend so far plus
reservations in flight plus this reservation within each cap); then it consumes from all of them.
A denial consumes nothing. Two implementations share this contract and one test suite:

- EmbeddedLimiter: the Rust limiter (`gateway._core.Limiter`) for the limits and the SQLite store's
  in-memory reservations for the credits and key budgets. One process only (settings refuse
  workers > 1 without Redis).
- RedisLimiter (gateway/store/redis_limiter.py): one `FCALL klawd_admit_v3` on Redis server
  time, exact across every worker and replica; a busy worker admits in process from a lease
  taken from the same buckets and balance first (never beyond a limit or a balance).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol, runtime_checkable

from msgspec import Struct

from gateway import _core
from gateway.store.base import KeyBudget

Outcome = Literal["admitted", "rate_limited", "insufficient_credits", "key_budget_exceeded"]


# gc=False (here and below): atoms and frozen Structs, never in a reference cycle: the cycle
# collector need not walk them, one per request (docs/decisions/0012, twenty-sixth pass).
class LimitSpec(Struct, frozen=True, gc=False):
    requests_per_minute: int
    requests_per_day: int
    tokens_per_minute: int | None = None


class KeyGate(Struct, frozen=True, gc=False):
    """The API key's share of one admission: its limits, its budgets, and the UTC day whose
    (and whose month's) spend the reservation counts against."""

    key_id: str
    day: str  # YYYY-MM-DD
    requests_per_minute: int | None = None
    requests_per_day: int | None = None
    budget: KeyBudget = KeyBudget()

    @property
    def month(self) -> str:
        return self.day[:7]

    @property
    def has_budget(self) -> bool:
        """Only a key with a budget has its reservations counted (a key without one has its
        spend recorded at settlement, nothing held in flight)."""
        b = self.budget
        return b.day_micros is not None or b.month_micros is not None or b.total_micros is not None


def periods(day: str) -> tuple[str, str, str]:
    """A key budget's periods of a UTC day: the day, its month, ever (gateway/store/sqlite_keys)."""
    return f"d:{day}", f"m:{day[:7]}", "t"


def spend_names(key_id: str, day: str) -> tuple[str, str, str]:
    """The credit book's names of a key's three periods of `day` (gateway._core.CreditBook)."""
    day_period, month, ever = periods(day)
    return f"{key_id}|{day_period}", f"{key_id}|{month}", f"{key_id}|{ever}"


def budget_caps(key: KeyGate) -> tuple[int | None, int | None, int | None]:
    """The key's caps, in `spend_names`' order."""
    b = key.budget
    return b.day_micros, b.month_micros, b.total_micros


class Admission(Struct, frozen=True, gc=False):
    outcome: Outcome
    retry_after_s: float
    limit_requests: int
    remaining_requests: int
    reset_requests_s: float
    limit_requests_day: int
    remaining_requests_day: int
    reserved_micros: int = 0
    limited_by_key: bool = False  # the key's own limits (not the plan's) refused
    key_reserved_micros: int = 0  # reserved against the key's budgets (KeyGate.has_budget)
    hold_id: str = ""  # Redis: the reservation's hold, removed when the request is settled

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

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """`headers()` as the ASGI message carries them, built as bytes (the hot path's form:
        no dictionary and no encoding per header)."""
        return [
            (b"x-ratelimit-limit-requests", b"%d" % self.limit_requests),
            (b"x-ratelimit-remaining-requests", b"%d" % self.remaining_requests),
            (b"x-ratelimit-reset-requests", b"%ds" % math.ceil(self.reset_requests_s)),
            (b"x-ratelimit-limit-requests-day", b"%d" % self.limit_requests_day),
            (b"x-ratelimit-remaining-requests-day", b"%d" % self.remaining_requests_day),
        ]


# What a token charge is made of: (charge id, tokens) each (Limiter.charge_tokens)
Charges = tuple[tuple[str, int], ...]


class Limiter(Protocol):
    async def admit(
        self, account_id: str, spec: LimitSpec, reserve_micros: int, key: KeyGate | None = None
    ) -> Admission: ...
    async def peek(self, account_id: str, spec: LimitSpec) -> Admission:
        """Would one more request be admitted, and what is left now (nothing consumed)."""
        ...

    async def charge_tokens(
        self,
        account_id: str,
        spec: LimitSpec,
        tokens: int,
        charges: Charges = (),
        kept_s: float = 0.0,
    ) -> None:
        """May leave the tokens/minute bucket in debt. `charges`: what the tokens are made of,
        (charge id, tokens) each: a charge the store saw already is not taken again, so one
        whose reply was lost may be sent again. `kept_s`: the tokens are the shortfall of a
        bucket the worker kept while its charges failed, started full that many seconds ago and
        refilled since (gateway/token_charges.py): taken from the level the bucket had then, so
        its refill since is not counted twice."""
        ...


# What a cancelled caller's admission decided, once its reply comes: the caller gives it back.
Dropped = Callable[[Admission | None], None]  # None: nothing admitted (an error, lost)


@runtime_checkable
class SendingLimiter(Protocol):
    """A limiter whose admission is a round trip that can be sent before it is awaited (Redis):
    the route prepares its upstream call meanwhile (gateway/admission_gate.py)."""

    def send_admit(
        self,
        account_id: str,
        spec: LimitSpec,
        reserve_micros: int,
        key: KeyGate | None = None,
        dropped: Dropped | None = None,
    ) -> tuple[asyncio.Future[Any], bool] | None:
        """`admit`'s call sent without waiting: its reply's future, and whether it was written
        at once (else it is queued with the loop turn's commands: await it now, and read it
        with `admission_of`). None: it cannot be sent without waiting; call `admit`.
        `dropped`: called with the Admission if the future is cancelled before its reply came
        (the caller went away): the caller gives back what it took; with None if nothing was
        admitted (an error reply, or the connection lost before the reply)."""
        ...

    async def admit(
        self,
        account_id: str,
        spec: LimitSpec,
        reserve_micros: int,
        key: KeyGate | None = None,
        dropped: Dropped | None = None,
    ) -> Admission:
        """`Limiter.admit`; `dropped` as in `send_admit`, if the caller is cancelled while the
        call travels."""
        ...

    def reply_admission(
        self, reply: Any, reserve_micros: int, key: KeyGate | None = None
    ) -> Admission | None:
        """The Admission a sent call's reply holds (None: an error reply, nothing was taken)."""
        ...

    def admission_of(
        self, reply: Any, account_id: str, reserve_micros: int, key: KeyGate | None = None
    ) -> Admission | None:
        """The Admission of `send_admit`'s call from what its future gave (the reply, an error
        reply, or the exception of a lost connection), the same as `admit` would have returned;
        raises the store's error as `admit` does. None: Redis had forgotten its functions and
        the call did not run (they are loaded again): call `admit`."""
        ...


@runtime_checkable
class LeasingLimiter(Protocol):
    """A limiter that may hold admission leases (Redis: decision 0003, "Admission leases")."""

    def admit_leased(
        self,
        account_id: str,
        spec: LimitSpec,
        reserve_micros: int,
        key: KeyGate | None = None,
        counted: bool = False,
    ) -> Admission | None:
        """The admission decided in process from a lease held, or None (wait for
        `lease_asked`, or send it). `counted`: the request was counted already (asked again
        after waiting for a lease)."""
        ...

    def lease_asked(
        self, account_id: str, spec: LimitSpec, key: KeyGate | None = None
    ) -> Awaitable[None] | None:
        """The lease being asked for the account and key, to wait for before sending an
        admission (it never raises), or None."""
        ...

    def end_leases(self, account_id: str | None = None) -> None:
        """Give back the leases of an account (of every account: None)."""
        ...


@runtime_checkable
class DecidingLimiter(Protocol):
    """A limiter that decides an admission in process, never in flight (the embedded store's):
    `Meter.start` makes it a DecidedAdmission, without a pending admission's gate."""

    def decide(
        self, account_id: str, spec: LimitSpec, reserve_micros: int, key: KeyGate | None = None
    ) -> Admission | int:
        """The Admission, decided now; or an int: what must be read first (call `admit`)."""
        ...

    async def admit(
        self, account_id: str, spec: LimitSpec, reserve_micros: int, key: KeyGate | None = None
    ) -> Admission: ...

    def timed_decide(
        self, observe: Callable[[float], None], failed: Callable[[], None]
    ) -> Callable[[str, LimitSpec, int, KeyGate | None], Admission | int]:
        """`decide`, timed by the limiter itself (gateway/store_metrics.py): each decided
        admission's duration in seconds to `observe` (an int is not: the awaited `admit` after
        it is timed), each failure to `failed`."""
        ...


def bucket_keys(account_id: str) -> tuple[str, str, str]:
    return f"rpm:{account_id}", f"rpd:{account_id}", f"tpm:{account_id}"


class Reservations(Protocol):
    """The embedded store's side of an admission (gateway/store/sqlite.py): the credit book
    the limiter decides against, and the reads of what the book has not read yet."""

    book: _core.CreditBook

    async def read_balance(self, account_id: str) -> bool:
        """The account's stored balance read into the book (False: no such account)."""
        ...

    async def read_key_spend(self, key: KeyGate) -> None:
        """The key's settled spend of its periods of `key.day` read into the book."""
        ...


# `_core.Limiter.admit`'s reads asked for (and said done, `fresh`): the balance, the key's spend.
READ_BALANCE = 1
READ_SPEND = 2


class EmbeddedLimiter:
    """The limits, the credit reservation and the key's budgets decided in one call
    (`_core.Limiter.admit`, rust_core/src/admission.rs) against the store's credit book, under
    the limiter's lock: atomic, so no store call sits between the check and the take. What the
    book has not read (a balance never read, a short balance to read again before refusing,
    since credits added by another process land in the file; a key's spend never read) is read
    through the store and the call made again, saying what was just read; nothing is taken
    before that, so a cancellation meanwhile has nothing to give back."""

    def __init__(
        self,
        store: Reservations,
        clock: Callable[[], float] = time.time,
        max_keys: int = 1_000_000,
    ) -> None:
        self._core = _core.Limiter(max_keys)
        self._store = store
        self._book = store.book
        self._clock = clock
        # (account, spec, key) -> the admission's plan (limits, which are the key's, budgets):
        # built once per distinct account, limits and key's day, not per request.
        self._plans: dict[tuple[str, LimitSpec, KeyGate | None], _core.AdmitPlan] = {}
        # `decide`'s timing, once the store's metrics ask for it (`timed_decide`)
        self._observe: Callable[[float], None] | None = None
        self._failed: Callable[[], None] | None = None

    def _plan(self, account_id: str, spec: LimitSpec, key: KeyGate | None) -> _core.AdmitPlan:
        plan_key = (account_id, spec, key)
        plan = self._plans.get(plan_key)
        if plan is not None:
            return plan
        if len(self._plans) >= 100_000:
            self._plans.clear()
        buckets, quotas = self._limits(account_id, spec, key)
        budgeted = key if key is not None and key.has_budget else None
        plan = self._plans[plan_key] = _core.AdmitPlan(
            account_id,
            buckets,
            quotas,
            spec.requests_per_minute,
            spec.requests_per_day,
            (key.requests_per_minute or None) if key is not None else None,
            (key.requests_per_day or None) if key is not None else None,
            spend_names(budgeted.key_id, budgeted.day) if budgeted is not None else None,
            budget_caps(budgeted) if budgeted is not None else None,
            Admission,
        )
        return plan

    def decide(
        self, account_id: str, spec: LimitSpec, reserve_micros: int, key: KeyGate | None = None
    ) -> Admission | int:
        """`admit` without awaiting: the Admission, or the reads it needs first (an int:
        `READ_BALANCE | READ_SPEND`; then call `admit`, which reads them)."""
        started = time.perf_counter()
        try:
            plan = self._plans.get((account_id, spec, key)) or self._plan(account_id, spec, key)
            answer: Admission | int = self._core.admit(
                plan, self._book, reserve_micros, self._clock()
            )
        except Exception:
            if self._failed is not None:
                self._failed()
            raise
        if self._observe is not None and answer.__class__ is not int:
            self._observe(time.perf_counter() - started)
        return answer

    def timed_decide(
        self, observe: Callable[[float], None], failed: Callable[[], None]
    ) -> Callable[[str, LimitSpec, int, KeyGate | None], Admission | int]:
        """`DecidingLimiter.timed_decide`: `decide` observes itself (no timing wrapper's frame
        around each admission)."""
        self._observe = observe
        self._failed = failed
        return self.decide

    def _limits(
        self, account_id: str, spec: LimitSpec, key: KeyGate | None
    ) -> tuple[list[tuple[str, float, float, float]], list[tuple[str, int, int]]]:
        """Buckets: the account's requests/minute, the key's (if any), tokens/minute (if any);
        quotas: the account's requests/day, the key's (if any): the order the plan's layout
        reads the headers in (rust_core/src/admission.rs, `Layout`). Each request costs one."""
        rpm_key, rpd_key, tpm_key = bucket_keys(account_id)
        rpm = float(spec.requests_per_minute)
        buckets = [(rpm_key, rpm, rpm / 60.0, 1.0)]
        quotas = [(rpd_key, spec.requests_per_day, 1)]
        if key is not None and key.requests_per_minute:
            key_rpm = float(key.requests_per_minute)
            buckets.append((f"krpm:{key.key_id}", key_rpm, key_rpm / 60.0, 1.0))
        if key is not None and key.requests_per_day:
            quotas.append((f"krpd:{key.key_id}", key.requests_per_day, 1))
        if spec.tokens_per_minute:
            tpm = float(spec.tokens_per_minute)
            buckets.append((tpm_key, tpm, tpm / 60.0, 0.0))
        return buckets, quotas

    async def peek(self, account_id: str, spec: LimitSpec) -> Admission:
        """Would one more request be admitted, and what is left now (nothing consumed): the
        headers made as an admission's are (`_core.Limiter.peek_admission`)."""
        peeked: Admission = self._core.peek_admission(
            self._plan(account_id, spec, None), self._clock()
        )
        return peeked

    async def admit(
        self, account_id: str, spec: LimitSpec, reserve_micros: int, key: KeyGate | None = None
    ) -> Admission:
        plan = self._plan(account_id, spec, key)
        fresh = 0
        while True:  # (at most three calls: each read is asked for once)
            answer: Admission | int = self._core.admit(
                plan, self._book, reserve_micros, self._clock(), fresh
            )
            if not isinstance(answer, int):
                return answer
            if answer & READ_BALANCE:
                await self._store.read_balance(account_id)
            if answer & READ_SPEND and key is not None:
                await self._store.read_key_spend(key)
            fresh |= answer

    async def charge_tokens(
        self,
        account_id: str,
        spec: LimitSpec,
        tokens: int,
        charges: Charges = (),
        kept_s: float = 0.0,
    ) -> None:
        # (`charges` unread and `kept_s` always 0 here: the in-process bucket never misses a
        # charge, none is kept or sent again)
        if not spec.tokens_per_minute or tokens <= 0:
            return
        tpm = float(spec.tokens_per_minute)
        self._core.charge(bucket_keys(account_id)[2], tpm, tpm / 60.0, float(tokens), self._clock())
