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
The store takes that shortfall from its bucket's level as it was at the first kept charge
(`kept_s`, `klawd_charge_tokens_v2`), not as it is now: the refill since is in the shortfall
already, and an account already short when the outage began stays as short.

An account's next admission while its charge is kept (`landed`, from Meter.start) sends the
charge first and waits for it, so the store's bucket in debt refuses it as it would have
without the outage, rather than admitting it until a batch settles.

Decision record: docs/decisions/0005-resilience.md, "Thirtieth pass" and "Thirty-first pass".
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

    __slots__ = ("at", "level", "since", "spec")

    def __init__(self, spec: LimitSpec, at: float) -> None:
        self.spec = spec
        self.level = float(spec.tokens_per_minute or 0)
        self.at = at
        self.since = at  # the first kept charge's: the bucket full then

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
    StoreError); `charge_owed`: the kept ones charged (the usage recorder's after-settle hook);
    `landed`: an account's kept charge charged before its admission.
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
        self._sending: dict[str, asyncio.Future[None]] = {}  # account id -> its late charge's

    @property
    def owing(self) -> int:
        """The accounts whose charges are kept."""
        return len(self._owed)

    @property
    def kept(self) -> bool:
        """Whether any account's charge is kept or being charged late (Meter.start's check)."""
        return bool(self._owed or self._sending)

    async def charge(self, account_id: str, spec: LimitSpec, tokens: int, request_id: str) -> None:
        try:
            await self._limiter.charge_tokens(account_id, spec, tokens)
        except StoreError as exc:
            self._not_charged(account_id, spec, tokens, exc, f"request {request_id}")

    async def charge_owed(self, _batch: list[UsageEntry], _grants: dict[str, CreditGrant]) -> None:
        """The kept charges sent, the store having answered (a settled batch): each account's
        shortfall in one call (all of them pipelined); one the store is not reached for again is
        kept again."""
        if self._owed:
            await asyncio.shield(self._send(list(self._owed)))

    async def landed(self, account_id: str) -> None:
        """Before an admission of `account_id`: its kept charge sent (or the one on its way
        waited for), so that the admission sees it. The store not reached again: kept again,
        and the admission finds the store as it is."""
        sending = self._sending.get(account_id)
        if sending is None and account_id in self._owed:
            sending = self._send([account_id])
        if sending is not None:
            await asyncio.shield(sending)  # (a cancelled admission leaves the charge to land)

    def _send(self, accounts: list[str]) -> asyncio.Future[None]:
        """The kept charges of `accounts` sent in one task, which each account's admission may
        wait for until it ends."""
        owed = {account_id: self._owed.pop(account_id) for account_id in accounts}
        sending = asyncio.ensure_future(self._charge_late(owed))
        for account_id in owed:
            self._sending[account_id] = sending

        def sent(_: asyncio.Future[None]) -> None:
            for account_id in owed:
                if self._sending.get(account_id) is sending:
                    del self._sending[account_id]

        sending.add_done_callback(sent)
        return sending

    async def _charge_late(self, owed: dict[str, _Owed]) -> None:
        now = self._clock()
        due = [(account_id, kept, kept.short(now)) for account_id, kept in owed.items()]
        due = [charge for charge in due if charge[2] > 0]  # the others refilled: forgotten
        results = await asyncio.gather(
            *[
                self._limiter.charge_tokens(account_id, kept.spec, tokens, now - kept.since)
                for account_id, kept, tokens in due
            ],
            return_exceptions=True,
        )
        charged, accounts = 0, 0
        for (account_id, kept, tokens), result in zip(due, results, strict=True):
            if isinstance(result, StoreNotReached):
                self._keep_again(account_id, kept, result)
            elif isinstance(result, StoreError):
                self._not_charged(account_id, kept.spec, tokens, result, "an outage")
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

    def _keep_again(self, account_id: str, kept: _Owed, error: StoreNotReached) -> None:
        """A late charge the store was not reached for: kept as it was (its first kept charge's
        time too), with what the account's answers kept since."""
        newer = self._owed.get(account_id)
        if newer is not None:  # answers of the account kept charges meanwhile: one shortfall
            now = self._clock()
            newer.take(newer.spec, kept.short(now), now)
            newer.since = min(newer.since, kept.since)
        elif len(self._owed) < MAX_OWING:
            self._owed[account_id] = kept
        else:
            self._not_charged(account_id, kept.spec, kept.short(self._clock()), error, "an outage")
            return
        log.warning("store error: a kept token charge of %s kept again: %s", account_id, error)

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
