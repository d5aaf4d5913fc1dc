"""An account's `tokens_per_minute` charged with its served answers' tokens, across a store outage.

The charge follows the answer (its tokens are known only then), after the answer was settled
(billed): a store that fails it must not turn the answer into a 503 (decision 0005,
twenty-seventh pass). What it must not do either is forget the tokens: every charge carries an
id of its own, which the store remembers (`klawd_charge_tokens_v4`: a charge seen already is not
taken again), so a charge that failed, whether it never left the worker or its reply was lost
(it may have run; a Redis Cluster's client cannot tell the two apart), is kept here and sent
again, with its id, once the store answers: it counts once either way. The signal that it
answers is the usage recorder's next settled batch (the ledger's outbox, gateway/usage.py),
whose after-settle hook is `charge_owed`; an account's next admission sends its own first
(`landed`, from Meter.start), and the worker's shutdown sends what is left (`close`).

What is kept is an account's shortfall in a bucket of its own: each kept charge taken from a
bucket that was full at the first, refilling at `tokens_per_minute` a minute, as the store's
bucket would have done (gateway/store/lua/klawd.lua's `level_of`). So the tokens charged late are
what the store's bucket would still be short of when the store answers (after a long outage, not
every token of it: an answer's tokens count against the minute they were used in, as they would
have), never more than the tokens kept; an account whose bucket has refilled by then is forgotten.
The store takes that shortfall from its bucket's level as it was at the first kept charge
(`kept_s`), not as it is now: the refill since is in the shortfall already, and an account
already short when the outage began stays as short. The late charge lists the ids of every
charge it is made of: those the store saw already (they ran before their reply was lost) are
taken out of it.

Decision record: docs/decisions/0005-resilience.md, "Thirtieth pass", "Thirty-first pass",
"Thirty-second pass" and "Thirty-third pass".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway import ids
from gateway.metrics import NOT_CHARGED_REASONS
from gateway.store.base import StoreError

if TYPE_CHECKING:
    from gateway.limits import Limiter, LimitSpec
    from gateway.store.base import CreditGrant, UsageEntry

log = logging.getLogger("klawd.limits")

# Accounts with tokens kept at most (a few hundred bytes each, and 40 or so a kept charge); a
# charge of another account past it is dropped, and counted.
MAX_OWING = 10_000
# How long after its first kept charge an account's are sent again at most: the store remembers
# a charge's id 5 minutes (store/redis_limiter.py's CHARGE_ID_MS), so one sent later could count
# twice. An account whose answers are each below its limit has refilled its shortfall within a
# minute.
KEPT_LIFE_S = 120.0
# The shutdown's pause between two sends of what the store did not take (doubled each time)
CLOSE_PAUSE_S = 0.05

# Why tokens were not charged (`klawd_tokens_not_charged_total`'s `reason`): MAX_OWING accounts
# owe already; kept longer than KEPT_LIFE_S; still kept when the worker stopped.
FULL, EXPIRED, SHUTDOWN = NOT_CHARGED_REASONS


class _Owed:
    """One account's kept charges: the level of its bucket (capacity `spec.tokens_per_minute`)
    at `at` (the clock's seconds), and the charges it is made of, (id, tokens) each."""

    __slots__ = ("at", "charges", "level", "since", "spec")

    def __init__(self, spec: LimitSpec, at: float) -> None:
        self.spec = spec
        self.level = float(spec.tokens_per_minute or 0)
        self.at = at
        self.since = at  # the first kept charge's: the bucket full then
        self.charges: list[tuple[str, int]] = []

    def refilled(self, now: float) -> float:
        capacity = float(self.spec.tokens_per_minute or 0)
        return min(capacity, self.level + (now - self.at) * capacity / 60.0)

    def take(
        self, spec: LimitSpec, tokens: int, charges: list[tuple[str, int]], now: float
    ) -> None:
        self.level = self.refilled(now) - tokens
        self.spec = spec  # (the latest limits: a changed plan's capacity clamps the refill)
        self.at = now
        self.charges += charges

    def short(self, now: float) -> int:
        """The tokens the bucket is still short of now."""
        return round(float(self.spec.tokens_per_minute or 0) - self.refilled(now))


class TokenCharges:
    """`charge`: an answer's tokens charged to its account's token limit (never raises a
    StoreError); `charge_owed`: the kept ones charged (the usage recorder's after-settle hook);
    `landed`: an account's kept charge charged before its admission; `close`: the kept ones
    charged at the worker's shutdown, for a bounded while.
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
        # account id -> its late charge's send, and what it sends
        self._sending: dict[str, tuple[asyncio.Future[None], _Owed]] = {}

    @property
    def owing(self) -> int:
        """The accounts whose charges are kept."""
        return len(self._owed)

    @property
    def kept(self) -> bool:
        """Whether any account's charge is kept or being charged late (Meter.start's check)."""
        return bool(self._owed or self._sending)

    async def charge(self, account_id: str, spec: LimitSpec, tokens: int, request_id: str) -> None:
        charge = (ids.token_hex(8), tokens)
        try:
            await self._limiter.charge_tokens(account_id, spec, tokens, (charge,))
        except StoreError as exc:
            self._keep(account_id, spec, tokens, [charge], exc, f"request {request_id}")

    async def charge_owed(self, _batch: list[UsageEntry], _grants: dict[str, CreditGrant]) -> None:
        """The kept charges sent, the store having answered (a settled batch): each account's
        shortfall in one call (all of them pipelined); one the store fails again is kept
        again."""
        if self._owed:
            await asyncio.shield(self._send(list(self._owed)))

    async def landed(self, account_id: str) -> None:
        """Before an admission of `account_id`: its kept charge sent (or the one on its way
        waited for), so that the admission sees it. The store failing again: kept again, and
        the admission finds the store as it is."""
        sending = self._sending.get(account_id)
        if sending is None and account_id in self._owed:
            await asyncio.shield(self._send([account_id]))
        elif sending is not None:
            await asyncio.shield(sending[0])  # (a cancelled admission leaves the charge to land)

    async def close(self, within_s: float) -> None:
        """At the worker's shutdown: the kept charges sent, and sent again while the store
        fails them (pauses from CLOSE_PAUSE_S, doubled), for at most `within_s`. What is still
        kept then, or sent without a reply yet, is lost with the worker: said and counted
        (`shutdown`)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + within_s
        pause = CLOSE_PAUSE_S
        while self.kept and loop.time() < end:
            if self._owed:
                self._send(list(self._owed))
            sends = {sending for sending, _ in self._sending.values()}
            await asyncio.wait(sends, timeout=max(0.0, end - loop.time()))
            await asyncio.sleep(0)  # (the sends' own callbacks, `sent`, run first)
            if self._owed:
                await asyncio.sleep(max(0.0, min(pause, end - loop.time())))
                pause *= 2
        lost = {**{a: kept for a, (_, kept) in self._sending.items()}, **self._owed}
        if not lost:
            return
        now = self._clock()
        tokens = sum(max(0, kept.short(now)) for kept in lost.values())
        log.error(
            "shutdown: %d tokens of %d accounts kept while the store failed their charges not "
            "charged to the token limit after %.2f s: lost with the worker",
            tokens,
            len(lost),
            within_s,
        )
        if self._on_dropped is not None and tokens:
            self._on_dropped(SHUTDOWN, tokens)

    def _send(self, accounts: list[str]) -> asyncio.Future[None]:
        """The kept charges of `accounts` sent in one task, which each account's admission may
        wait for until it ends."""
        owed = {account_id: self._owed.pop(account_id) for account_id in accounts}
        sending = asyncio.ensure_future(self._charge_late(owed))
        for account_id, kept in owed.items():
            self._sending[account_id] = (sending, kept)

        def sent(_: asyncio.Future[None]) -> None:
            for account_id in owed:
                if self._sending.get(account_id, (None,))[0] is sending:
                    del self._sending[account_id]

        sending.add_done_callback(sent)
        return sending

    async def _charge_late(self, owed: dict[str, _Owed]) -> None:
        now = self._clock()
        due = []
        for account_id, kept in owed.items():
            tokens = kept.short(now)
            if tokens <= 0:
                continue  # refilled: forgotten
            if now - kept.since > KEPT_LIFE_S:  # its ids may be forgotten: it could count twice
                self._dropped(EXPIRED, tokens, f"{account_id}'s, kept {KEPT_LIFE_S:.0f} s")
            else:
                due.append((account_id, kept, tokens))
        results = await asyncio.gather(
            *[
                self._limiter.charge_tokens(
                    account_id, kept.spec, tokens, tuple(kept.charges), now - kept.since
                )
                for account_id, kept, tokens in due
            ],
            return_exceptions=True,
        )
        charged, accounts = 0, 0
        for (account_id, kept, tokens), result in zip(due, results, strict=True):
            if isinstance(result, StoreError):
                self._keep_again(account_id, kept, result)
            elif isinstance(result, BaseException):
                log.error("a kept token charge failed", exc_info=result)
            else:
                charged, accounts = charged + tokens, accounts + 1
        if accounts:
            log.info(
                "the store answers again: %d tokens kept while it failed their charges "
                "charged to the token limits of %d accounts",
                charged,
                accounts,
            )

    def _keep_again(self, account_id: str, kept: _Owed, error: StoreError) -> None:
        """A late charge the store failed: kept as it was (its first kept charge's time and
        its charges' ids too: it may have run), with what the account's answers kept since."""
        newer = self._owed.get(account_id)
        if newer is not None:  # answers of the account kept charges meanwhile: one shortfall
            now = self._clock()
            newer.take(newer.spec, kept.short(now), kept.charges, now)
            newer.since = min(newer.since, kept.since)
        elif len(self._owed) < MAX_OWING:
            self._owed[account_id] = kept
        else:
            self._dropped(FULL, kept.short(self._clock()), f"an outage, {account_id}'s")
            return
        log.warning("store error: a kept token charge of %s kept again: %s", account_id, error)

    def _keep(
        self,
        account_id: str,
        spec: LimitSpec,
        tokens: int,
        charges: list[tuple[str, int]],
        error: StoreError,
        whose: str,
    ) -> None:
        kept = self._owed.get(account_id)
        if kept is None and len(self._owed) < MAX_OWING:
            kept = self._owed[account_id] = _Owed(spec, self._clock())
        if kept is None:
            self._dropped(FULL, tokens, whose)
            return
        kept.take(spec, tokens, charges, self._clock())
        log.warning(
            "store error: %d tokens of %s kept, to be charged to the token limit when the store "
            "answers again: %s",
            tokens,
            whose,
            error,
        )

    def _dropped(self, reason: str, tokens: int, whose: str) -> None:
        # The answer is served and settled (billed): a token limit the store could not charge
        # must not turn it into the client's 503. Fails open, said and counted.
        log.warning(
            "store error: %d tokens of %s not charged to the token limit (%s)",
            tokens,
            whose,
            f"{MAX_OWING} accounts owe already" if reason == FULL else "kept too long",
        )
        if self._on_dropped is not None:
            self._on_dropped(reason, tokens)
