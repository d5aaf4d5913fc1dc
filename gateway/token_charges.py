"""An account's `tokens_per_minute` charged with its served answers' tokens, across a store outage.

The charge follows the answer (its tokens are known only then), after the answer was settled
(billed): a store that fails it must not turn the answer into a 503 (decision 0005,
twenty-seventh pass). What it must not do either is forget the tokens: a charge that provably
never ran (`StoreNotReached`: the command never left the worker) is kept here and charged once
the store answers again, so the account's limit bites after the outage. The signal that it
answers is the usage recorder's next settled batch (the ledger's outbox, gateway/usage.py: the
request's own ledger entry, recorded before its charge, is settled after the charge failed), whose
after-settle hook is `charge_owed`. A charge whose outcome is unknown (sent, and the connection
lost before its reply: it may have run) is not kept, since charging it again could count it twice;
it is counted with what a full keep drops (`on_dropped`).

What is kept is an account's shortfall in a bucket of its own: each kept charge taken from a
bucket that was full at the first, refilling at `tokens_per_minute` a minute, as the store's
bucket would have done (gateway/store/lua/klawd.lua's `level_of`). So the tokens charged late are
what the store's bucket would still be short of when the store answers (after a long outage, not
every token of it: an answer's tokens count against the minute they were used in, as they would
have), never more than the tokens kept; an account whose bucket has refilled by then is forgotten.

Decision record: docs/decisions/0005-resilience.md, "Thirtieth pass".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.metrics import NOT_CHARGED_REASONS
from gateway.store.base import StoreError, StoreNotReached

if TYPE_CHECKING:
    from gateway.limits import Limiter, LimitSpec
    from gateway.store.base import CreditGrant, UsageEntry

log = logging.getLogger("klawd.limits")

# Accounts with tokens kept at most (a few hundred bytes each); a charge of another account past
# it is dropped, and counted.
MAX_OWING = 10_000

# Why tokens were not charged (`klawd_tokens_not_charged_total`'s `reason`): sent, and the reply
# lost (it may have run); MAX_OWING accounts owe already.
UNKNOWN, FULL = NOT_CHARGED_REASONS


class _Owed:
    """One account's kept charges: the level of its bucket (capacity `spec.tokens_per_minute`)
    at `at` (the clock's seconds)."""

    __slots__ = ("at", "level", "spec")

    def __init__(self, spec: LimitSpec, at: float) -> None:
        self.spec = spec
        self.level = float(spec.tokens_per_minute or 0)
        self.at = at

    def refilled(self, now: float) -> float:
        capacity = float(self.spec.tokens_per_minute or 0)
        return min(capacity, self.level + (now - self.at) * capacity / 60.0)

    def take(self, spec: LimitSpec, tokens: int, now: float) -> None:
        self.level = self.refilled(now) - tokens
        self.spec = spec  # (the latest limits: a changed plan's capacity clamps the refill)
        self.at = now

    def short(self, now: float) -> int:
        """The tokens the bucket is still short of now."""
        return round(float(self.spec.tokens_per_minute or 0) - self.refilled(now))


class TokenCharges:
    """`charge`: an answer's tokens charged to its account's token limit (never raises a
    StoreError); `charge_owed`: the kept ones charged (the usage recorder's after-settle hook).
    `on_dropped(reason, tokens)`: tokens never charged (`NOT_CHARGED_REASONS`)."""

    def __init__(
        self,
        limiter: Limiter,
        on_dropped: Callable[[str, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limiter = limiter
        self._on_dropped = on_dropped
        self._clock = clock
        self._owed: dict[str, _Owed] = {}  # account id -> its kept charges
        self._charging = False  # a `charge_owed` is sending (one at a time)

    @property
    def owing(self) -> int:
        """The accounts whose charges are kept."""
        return len(self._owed)

    async def charge(self, account_id: str, spec: LimitSpec, tokens: int, request_id: str) -> None:
        try:
            await self._limiter.charge_tokens(account_id, spec, tokens)
        except StoreError as exc:
            self._not_charged(account_id, spec, tokens, exc, f"request {request_id}")

    async def charge_owed(self, _batch: list[UsageEntry], _grants: dict[str, CreditGrant]) -> None:
        """The kept charges sent, the store having answered (a settled batch): each account's
        shortfall in one call (all of them pipelined); one the store is not reached for again is
        kept again."""
        if not self._owed or self._charging:
            return
        self._charging = True
        try:
            now = self._clock()
            owed, self._owed = self._owed, {}
            due = [(account_id, kept.spec, kept.short(now)) for account_id, kept in owed.items()]
            due = [charge for charge in due if charge[2] > 0]  # the others refilled: forgotten
            results = await asyncio.gather(
                *[self._limiter.charge_tokens(*charge) for charge in due], return_exceptions=True
            )
            charged, accounts = 0, 0
            for (account_id, spec, tokens), result in zip(due, results, strict=True):
                if isinstance(result, StoreError):
                    self._not_charged(account_id, spec, tokens, result, "an outage")
                elif isinstance(result, BaseException):
                    log.error("a kept token charge failed", exc_info=result)
                else:
                    charged, accounts = charged + tokens, accounts + 1
            if accounts:
                log.info(
                    "the store answers again: %d tokens kept while it was not reached charged "
                    "to the token limits of %d accounts",
                    charged,
                    accounts,
                )
        finally:
            self._charging = False

    def _not_charged(
        self, account_id: str, spec: LimitSpec, tokens: int, error: StoreError, whose: str
    ) -> None:
        if isinstance(error, StoreNotReached):
            kept = self._owed.get(account_id)
            if kept is None and len(self._owed) < MAX_OWING:
                kept = self._owed[account_id] = _Owed(spec, self._clock())
            if kept is not None:
                kept.take(spec, tokens, self._clock())
                log.warning(
                    "store error: %d tokens of %s kept, to be charged to the token limit when "
                    "the store answers again: %s",
                    tokens,
                    whose,
                    error,
                )
                return
            reason = FULL
        else:
            reason = UNKNOWN
        # The answer is served and settled (billed): a token limit the store could not charge
        # must not turn it into the client's 503. Fails open, said and counted.
        log.warning(
            "store error: %d tokens of %s not charged to the token limit (%s): %s",
            tokens,
            whose,
            "the charge may have run" if reason == UNKNOWN else f"{MAX_OWING} accounts owe already",
            error,
        )
        if self._on_dropped is not None:
            self._on_dropped(reason, tokens)
