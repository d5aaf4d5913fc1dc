"""Admission on Redis: one `FCALL klawd_admit_v3` on Redis server time decides the account's
limits and credit reservation and the API key's limits and budget reservation together, so it is
exact across every worker and replica and costs one round trip (gateway/store/lua/klawd.lua).
A reservation is recorded as a hold with an expiry (`[store] reservation_hold_s`): settling
removes it, and one never settled (its worker killed, its reply lost) is given back once it
expired, by the account's next settlement or by an admission its credit would refuse.

A busy worker admits from a lease (decision 0003, "Admission leases (issue 19zl)"): a block of
an account and key's requests and credit taken by one `FCALL klawd_admit_lease_v1` from the same
buckets, quotas and balance, admitted in process (`admit_leased`), the unused rest given back."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import hiredis

from gateway import ids
from gateway.limits import Admission, Charges, Dropped, KeyGate, LimitSpec, Outcome
from gateway.store.base import StoreError
from gateway.store.resp import RespConnectionError, RespReplyError

if TYPE_CHECKING:
    from gateway.store.redis import RedisStore

log = logging.getLogger("klawd.redis")


def _acct(account_id: str) -> str:
    return f"klawd:acct:{{{account_id}}}"


def _spend_keys(account_id: str, key_id: str, day: str) -> tuple[str, str, str]:
    return _spend_keys_in(_acct(account_id), key_id, day)


def _spend_keys_in(acct: str, key_id: str, day: str) -> tuple[str, str, str]:
    """`_spend_keys` from the account's key prefix (`_acct`) already made."""
    base = f"{acct}:kspend:{key_id}"
    return f"{base}:d:{day}", f"{base}:m:{day[:7]}", f"{base}:t"


def holds_given_back(account_id: str, count: int) -> None:
    """Expired reservation holds were given back: requests admitted longer ago than
    `[store] reservation_hold_s` and never settled (gateway/store/lua/klawd.lua). Said, because
    it means a worker died with requests in flight, a reply was lost, or the hold is too short
    for the requests served."""
    log.warning(
        "gave back %d expired credit reservation(s) of account %s: requests admitted more than "
        "[store] reservation_hold_s ago were never settled (a worker killed, a reply lost, or "
        "a request longer than the hold)",
        count,
        account_id,
    )


class LibraryMissing(StoreError):
    """A restarted Redis without persistence forgot the functions: the call did not run."""


OUTCOMES: dict[int, Outcome] = {
    0: "admitted",
    1: "rate_limited",
    2: "insufficient_credits",
    3: "key_budget_exceeded",
}


# What one admission's call is made of, but for the reservation: its keys, the arguments before
# the reservation (the plan's limits) and after it (consume, and the key's limits and budgets).
_Call = tuple[list[str], list[int], list[int]]
CALLS_KEPT = 100_000
# How long the store remembers a token charge's id at least (klawd_charge_tokens_v4's window):
# past the latest its worker sends it again (gateway/token_charges.py's KEPT_LIFE_S, 2 minutes
# after the account's first kept charge), with room for the command timeouts and the worker's
# clock against Redis's.
CHARGE_ID_MS = 300_000


def _packed(*args: Any) -> bytes:
    """Arguments packed as in a RESP command, without the command's count."""
    payload: bytes = hiredis.pack_command(args)
    return payload[payload.index(b"\r\n") + 2 :]


def _needs_key_share(key: KeyGate | None) -> bool:
    """Whether the call must carry the key's share: a key without limits or budget changes
    nothing in `klawd_admit_v3` (its five keys are neither read nor written, its refusal flag
    stays 0), so its call is the account's alone: ten arguments fewer to pack, send and parse."""
    return key is not None and bool(
        key.requests_per_minute or key.requests_per_day or key.has_budget
    )


def _admission(reply: list[Any], reserve: int, consume: bool, key: KeyGate | None) -> Admission:
    outcome, retry_ms, remaining, reset_ms, remaining_day, _balance = reply[:6]
    limit, limit_day, by_key, hold_id = reply[6:10]
    result = OUTCOMES[int(outcome)]
    reserved = reserve if result == "admitted" and consume else 0
    return Admission(
        outcome=result,
        retry_after_s=int(retry_ms) / 1000,
        limit_requests=int(limit),
        remaining_requests=int(remaining),
        reset_requests_s=int(reset_ms) / 1000,
        limit_requests_day=int(limit_day),
        remaining_requests_day=int(remaining_day),
        reserved_micros=reserved,
        limited_by_key=bool(int(by_key)),
        key_reserved_micros=reserved if key is not None and key.has_budget else 0,
        hold_id=hold_id.decode() if type(hold_id) is bytes else hold_id,
    )


# Admission leases (decision 0003, "Admission leases (issue 19zl)"): a worker that admitted at
# least LEASE_MIN_SEEN requests of one account and key in the last LEASE_LIFE_S asks, with the
# next one's admission, for as many more as it saw (at most LEASE_MAX), admitted in process
# until used or LEASE_LIFE_S after it asked. Half used, the next request asks for the next
# lease, which takes over when this one is over: a busy worker is not left without one while
# the next is asked for.
LEASE_LIFE_S = 0.25
LEASE_MAX = 256
LEASE_MIN_SEEN = 8
# How long a lease asked for is waited for before another may be asked (its reply lost).
LEASE_ASKING_S = 2.0

_GateKey = tuple[str, LimitSpec, KeyGate | None]


class _Lease:
    """Requests and credit taken from Redis by `klawd_admit_lease_v1`, admitted in process."""

    __slots__ = (
        "credit",
        "day",
        "half",
        "hold",
        "left",
        "limit",
        "limit_day",
        "remaining",
        "remaining_day",
        "timer",
        "until",
    )

    def __init__(self, hold: str, left: int, credit: int, until: float, reply: list[Any]) -> None:
        self.hold = hold  # "L…": the hold of its credit, in each entry it admits
        self.left = left  # requests it may still admit
        self.half = left // 2  # left this many, the next lease is asked for
        self.credit = credit  # micros it may still reserve
        self.until = until  # the worker's monotonic clock
        # the headers' figures after the request that asked for it (as if one by one)
        self.limit = int(reply[6])
        self.remaining = int(reply[2])
        self.limit_day = int(reply[7])
        self.remaining_day = int(reply[4])
        self.day = int(reply[13])  # Redis's day number it was granted in
        self.timer: asyncio.TimerHandle | None = None


class _Seen:
    """One account and key's admissions on this worker: its rate, its lease."""

    __slots__ = (
        "asked", "asking_until", "count", "ended", "lease", "next", "previous", "refused",
        "room", "window",
    )  # fmt: skip

    def __init__(self, now: float) -> None:
        self.window = now  # the start of the current window of LEASE_LIFE_S
        self.count = 0  # admissions asked for in it
        self.previous = 0  # ... in the window before
        self.lease: _Lease | None = None
        self.next: _Lease | None = None  # granted while `lease` was in use: its successor
        self.asking_until = 0.0  # a lease is asked for until then (its reply not read yet)
        self.ended = 0  # times its leases were ended (`end_leases`): one asked before is void
        self.refused = False  # the last lease asked for was not granted (near a bound)
        # The lease being asked for: done once its reply is read (or given up on), and how
        # many more requests may wait for it (`lease_asked`): as many as it was asked for.
        self.asked: asyncio.Future[None] | None = None
        self.room = 0


def _answered(seen: _Seen, asked: asyncio.Future[None]) -> None:
    """The lease asked for is answered (or no longer waited for): its waiters go on."""
    if seen.asked is asked:
        seen.asked, seen.room = None, 0
    if not asked.done():
        asked.set_result(None)


class RedisLimiter:
    """Admission in one FCALL on Redis server time: exact across every worker and replica."""

    def __init__(self, store: RedisStore, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._clock = clock
        self._seen: dict[_GateKey, _Seen] = {}
        self._returns: set[asyncio.Task[Any]] = set()  # leases being given back
        # (account, plan limits, key gate, consume) -> its call but the reservation: the same
        # few accounts and keys are admitted all day, so their key names are built once a day.
        self._calls: dict[tuple[str, LimitSpec, KeyGate | None, bool], _Call] = {}
        # (account, plan limits, key gate) -> `send_admit`'s call packed but for the
        # reservation and the hold: up to the reservation (with the call's count), and the
        # tail between them (`_sent_call`).
        self._sent_calls: dict[tuple[str, LimitSpec, KeyGate | None], tuple[bytes, str]] = {}
        self._hold_ms = _packed(store.reservation_hold_ms).decode()
        # redis-py (a Redis Cluster) sends a call again when its read timed out, though the call
        # may have run: its admissions are `klawd_admit_v4`'s, which answers that retry as the
        # first try did. The lean client never sends a call twice: v3 (issue 19zzzzzl).
        self._resent = not store.lean
        self._admit_function = "klawd_admit_v4" if self._resent else "klawd_admit_v3"
        # The error replies of lease calls not yet read: `admission_of` names their function.
        # Weak: a reply no admission reads (its request cancelled) is not kept.
        self._lease_errors: weakref.WeakSet[RespReplyError] = weakref.WeakSet()

    def _call(self, account_id: str, spec: LimitSpec, consume: bool, key: KeyGate | None) -> _Call:
        cache_key = (account_id, spec, key, consume)
        call = self._calls.get(cache_key)
        if call is not None:
            return call
        acct = _acct(account_id)
        keys = [f"{acct}:rpm", f"{acct}:rpd", f"{acct}:tpm", f"{acct}:credits"]
        head = [spec.requests_per_minute, spec.requests_per_day, spec.tokens_per_minute or 0]
        tail = [1 if consume else 0]
        if key is not None and _needs_key_share(key):
            keys += [f"{acct}:krpm:{key.key_id}", f"{acct}:krpd:{key.key_id}"]
            keys += _spend_keys_in(acct, key.key_id, key.day)
            budget = key.budget
            tail += [
                key.requests_per_minute or 0,
                key.requests_per_day or 0,
                -1 if budget.day_micros is None else budget.day_micros,
                -1 if budget.month_micros is None else budget.month_micros,
                -1 if budget.total_micros is None else budget.total_micros,
            ]
        keys.append(f"{acct}:holds")  # klawd_admit_v3's, always last
        if len(self._calls) >= CALLS_KEPT:
            self._calls.clear()
        call = self._calls[cache_key] = (keys, head, tail)
        return call

    def _sent_call(
        self, account_id: str, spec: LimitSpec, key: KeyGate | None
    ) -> tuple[bytes, str]:
        """`send_admit`'s call packed around its reservation and hold, which change with every
        admission: hiredis packed the whole call each time (about 1.6 us, a `sprintf` per
        argument), where these two are a few bytes."""
        cache_key = (account_id, spec, key)
        sent = self._sent_calls.get(cache_key)
        if sent is not None:
            return sent
        keys, head, tail = self._call(account_id, spec, True, key)
        count = 3 + len(keys) + len(head) + 1 + len(tail) + 2
        before = b"*%d\r\n" % count + _packed("FCALL", "klawd_admit_v3", len(keys), *keys, *head)
        if len(self._sent_calls) >= CALLS_KEPT:
            self._sent_calls.clear()
        sent = self._sent_calls[cache_key] = (before, _packed(*tail).decode())
        return sent

    async def _run(
        self,
        account_id: str,
        spec: LimitSpec,
        reserve: int,
        consume: bool,
        key: KeyGate | None = None,
        dropped: Dropped | None = None,
    ) -> Admission:
        keys, head, tail = self._call(account_id, spec, consume, key)
        undo = None if dropped is None else self._undo(dropped, reserve, key)
        reply = await self._store.fcall(
            self._admit_function, keys, [*head, reserve, *tail, *self._hold(consume, reserve)], undo
        )
        if reply[10]:  # expired holds given back (only when the credit would refuse)
            self._store.holds_given_back(account_id, int(reply[10]))
        return _admission(reply, reserve, consume, key)

    def _hold(self, consume: bool, reserve: int) -> tuple[str, int]:
        """The last two arguments of `klawd_admit_v3` and `_v4`: the id of the hold it records
        if it reserves (echoed in its reply; v4's, whenever it takes a request: its retry's
        proof), and the hold's length."""
        drawn = consume and (reserve > 0 or self._resent)
        return (ids.token_hex(8) if drawn else "", self._store.reservation_hold_ms)

    def _undo(self, dropped: Dropped, reserve: int, key: KeyGate | None) -> Callable[[Any], None]:
        """The lean client's `undo` of an admission: its reply made an Admission for `dropped`
        (an error reply took nothing). A partial: no frame of its own per admission."""
        return functools.partial(self._undone, dropped, reserve, key)

    def _undone(self, dropped: Dropped, reserve: int, key: KeyGate | None, reply: Any) -> None:
        dropped(self.reply_admission(reply, reserve, key))

    def reply_admission(
        self, reply: Any, reserve_micros: int, key: KeyGate | None = None
    ) -> Admission | None:
        if isinstance(reply, Exception):  # an error reply, or the connection lost
            return None
        return _admission(reply, reserve_micros, True, key)

    # -- leases -----------------------------------------------------------------------------
    def admit_leased(
        self,
        account_id: str,
        spec: LimitSpec,
        reserve_micros: int,
        key: KeyGate | None = None,
        counted: bool = False,
    ) -> Admission | None:
        """The admission decided in process from the account and key's lease, if one is held
        that covers it; None: await `lease_asked`'s future if it gives one (then call this
        again, `counted`), else call `send_admit` (which asks for a lease when the worker has
        seen enough of this account and key lately). Counts the request either way (unless
        `counted`), where leases are asked for at all (the lean client: `RedisStore.lean`)."""
        if not self._store.lean:
            return None  # no lease is ever asked for (a Redis Cluster), nor held
        gate = (account_id, spec, key)
        seen = self._seen.get(gate)
        now = self._clock()
        if seen is None:
            if len(self._seen) >= CALLS_KEPT:
                self._forget_seen()
            seen = self._seen[gate] = _Seen(now)
        elif now - seen.window >= LEASE_LIFE_S:
            seen.previous = seen.count if now - seen.window < 2 * LEASE_LIFE_S else 0
            seen.window, seen.count = now, 0
        if not counted:
            seen.count += 1
        lease = seen.lease
        while lease is not None and (now >= lease.until or lease.left <= 0):
            self._end(gate, seen, lease)  # over: its successor, if any, takes over
            lease = seen.lease
        if lease is None or reserve_micros > lease.credit:
            return None  # none held, or it holds too little for this one: admitted exactly
        if lease.left <= lease.half and seen.next is None and now >= seen.asking_until:
            return None  # this one asks for the next lease (`send_admit`)
        lease.left -= 1
        lease.credit -= reserve_micros
        lease.remaining -= 1
        lease.remaining_day -= 1
        limit, left = lease.limit, max(lease.remaining, 0)
        return Admission(
            outcome="admitted",
            retry_after_s=0.0,
            limit_requests=limit,
            remaining_requests=left,
            reset_requests_s=math.ceil((limit - left) * 60.0 / limit) if limit else 0.0,
            limit_requests_day=lease.limit_day,
            remaining_requests_day=max(lease.remaining_day, 0),
            reserved_micros=reserve_micros,
            key_reserved_micros=reserve_micros if key is not None and key.has_budget else 0,
            hold_id=lease.hold if reserve_micros else "",
        )

    def lease_asked(
        self, account_id: str, spec: LimitSpec, key: KeyGate | None = None
    ) -> Awaitable[None] | None:
        """For a request `admit_leased` did not admit: the lease of its account and key being
        asked for, to wait for (it never raises; cancelling the wait cancels nothing else), if
        one is and it has room for one more waiter; then `admit_leased(..., counted=True)`.
        In a burst, the requests arriving while a lease travels would each send an exact
        admission, a round trip queued behind the lease's on the same connections: its reply
        comes first and admits them in process. None: send the admission now (no lease asked,
        or as many waiting as it asked for)."""
        seen = self._seen.get((account_id, spec, key))
        if seen is None or seen.asked is None or seen.room <= 0:
            return None
        seen.room -= 1
        return asyncio.shield(seen.asked)

    def _lease_size(self, gate: _GateKey) -> int:
        """How many requests to ask a lease for with this admission (0: none): as many as the
        last window or this one saw, or, while the rate allows it, as many as this window's
        rate brings in a lease's life."""
        seen = self._seen.get(gate)
        now = self._clock()
        if seen is None or seen.next is not None or now < seen.asking_until:
            return 0
        spec, key = gate[1], gate[2]
        if spec.tokens_per_minute:
            return 0  # decided per request (klawd_admit_lease_v1 would not grant it)
        wanted = max(seen.previous, seen.count)
        if wanted < LEASE_MIN_SEEN:
            return 0
        elapsed = now - seen.window
        if seen.count >= LEASE_MIN_SEEN and elapsed > 0 and not seen.refused:
            # A burst's first lease: sized by the count so far it covers a few ms of arrivals,
            # and each of its successors is asked for while the last one's requests run out,
            # so the requests in between are admitted exactly, a round trip each. Never more
            # than the requests per minute allow in a lease's life (nor, by the lease's rules,
            # near any bound: refused once, the count sizes the next).
            by_rate = (seen.count - 1) * LEASE_LIFE_S / elapsed
            for per_minute in (spec.requests_per_minute, key.requests_per_minute if key else 0):
                if per_minute:
                    by_rate = min(by_rate, per_minute * LEASE_LIFE_S / 60)
            wanted = max(wanted, round(by_rate))
        return min(wanted, LEASE_MAX)

    def _send_lease(
        self,
        gate: _GateKey,
        count: int,
        reserve_micros: int,
        dropped: Dropped | None,
    ) -> tuple[asyncio.Future[Any], bool] | None:
        """`send_admit`'s call, asking for a lease of `count` requests besides."""
        account_id, spec, key = gate
        keys, head, tail = self._call(account_id, spec, True, key)
        hold = ids.token_hex(8) if reserve_micros else ""
        lease_id = "L" + ids.token_hex(8)
        credit = count * reserve_micros
        hold_ms = self._store.reservation_hold_ms
        args = [*head, reserve_micros, *tail, hold, hold_ms]
        leases = f"{_acct(account_id)}:leases"
        # Never longer than its hold: once the hold expired Redis gives its credit back (the
        # account's next settlement or credit refusal), which the lease must not admit from.
        life_ms = min(round(LEASE_LIFE_S * 1000), hold_ms)
        command: tuple[Any, ...] = (
            "FCALL", "klawd_admit_lease_v1", len(keys) + 1, *keys, leases,
            *args, count, credit, life_ms, lease_id,
        )  # fmt: skip
        payload: bytes = hiredis.pack_command(command)
        asked = self._clock()
        seen = self._seen[gate]
        seen.asking_until = asked + LEASE_ASKING_S
        loop = asyncio.get_running_loop()
        asked_for: asyncio.Future[None] = loop.create_future()
        granted = functools.partial(
            self._granted, gate, lease_id, credit, asked, seen, seen.ended, asked_for
        )
        undo = None
        if dropped is not None:
            undo = functools.partial(self._lease_undone, granted, dropped, reserve_micros, key)
        sent = self._store.send_packed_fcall(payload, undo)
        if sent is None:
            seen.asking_until = 0.0
            return None
        seen.asked, seen.room = asked_for, count
        # not waited for longer than a lease is asked for (its reply lost with the connection
        # after its request went away)
        loop.call_later(LEASE_ASKING_S, _answered, seen, asked_for)

        def replied(future: asyncio.Future[Any]) -> None:
            if future.cancelled():
                if dropped is None:
                    _answered(seen, asked_for)  # its reply is dropped: no lease comes
                return  # its reply goes to `undo`
            if future.exception() is None:
                reply = future.result()
                if type(reply) is RespReplyError:
                    self._lease_errors.add(reply)  # read by `admission_of`, which runs after
                granted(reply)
            else:
                seen.asking_until = 0.0  # lost with the connection (its credit: the hold)
                _answered(seen, asked_for)

        sent[0].add_done_callback(replied)
        return sent

    def _lease_undone(
        self,
        granted: Callable[[Any], None],
        dropped: Dropped,
        reserve: int,
        key: KeyGate | None,
        reply: Any,
    ) -> None:
        """The reply of a lease's call whose request went away: the lease is kept, the
        request's admission given back."""
        granted(reply)
        self._undone(dropped, reserve, key, reply)

    def _granted(
        self,
        gate: _GateKey,
        lease_id: str,
        credit: int,
        asked: float,
        asker: _Seen,
        ended: int,
        asked_for: asyncio.Future[None],
        reply: Any,
    ) -> None:
        """A lease's reply: the lease installed if granted; its waiters go on either way."""
        try:
            seen = self._seen.get(gate)
            if seen is asker:
                seen.asking_until = 0.0
            if type(reply) is not list or len(reply) < 14 or not int(reply[11]):
                if type(reply) is list and seen is asker:
                    asker.refused = True  # near a bound: the next is sized by the count alone
                return  # an error reply, or no lease granted
            asker.refused = False
            # its hold: the member of the account's holds (with the key and day of a budgeted key)
            hold = reply[14].decode() if len(reply) > 14 and reply[14] else lease_id
            lease = _Lease(hold, int(reply[11]), credit, asked + int(reply[12]) / 1000, reply)
            if seen is not asker or asker.ended != ended or asker.next is not None:
                # forgotten meanwhile, or its leases ended while it travelled (its account changed:
                # it was taken under what changed): given back now, never used
                self._return(gate, lease)
                return
            if seen.lease is None:
                seen.lease = lease
            else:
                seen.next = lease
            loop = asyncio.get_running_loop()
            lease.timer = loop.call_later(
                max(0.0, lease.until - self._clock()), self._over, gate, lease
            )
        finally:
            _answered(asker, asked_for)  # its waiters go on, the lease installed (if granted)

    def _over(self, gate: _GateKey, lease: _Lease) -> None:
        """A lease's life is over (its timer): given back, if it is still held."""
        lease.timer = None
        seen = self._seen.get(gate)
        if seen is not None and lease in (seen.lease, seen.next):
            self._end(gate, seen, lease)

    def _end(self, gate: _GateKey, seen: _Seen, lease: _Lease) -> None:
        """The lease is no longer used (its successor takes over) and its rest given back."""
        if seen.lease is lease:
            seen.lease, seen.next = seen.next, None
        elif seen.next is lease:
            seen.next = None
        if lease.timer is not None:
            lease.timer.cancel()
            lease.timer = None
        self._return(gate, lease)

    def _give_back(self, gate: _GateKey, seen: _Seen) -> None:
        """Every lease of the account and key given back, and one asked for meanwhile once it
        is granted."""
        seen.ended += 1
        while seen.lease is not None:
            self._end(gate, seen, seen.lease)

    def _return(self, gate: _GateKey, lease: _Lease) -> None:
        """What the lease did not use goes back to Redis (`klawd_lease_return_v1`), without
        waiting for it."""
        if lease.left <= 0 and lease.credit <= 0:
            return
        task = asyncio.get_running_loop().create_task(self._returned(gate, lease))
        self._returns.add(task)
        task.add_done_callback(self._returns.discard)

    async def _returned(self, gate: _GateKey, lease: _Lease) -> None:
        account_id, spec, key = gate
        acct = _acct(account_id)
        keys = [f"{acct}:rpm", f"{acct}:rpd", f"{acct}:credits", f"{acct}:holds", f"{acct}:leases"]
        key_rpm = key_rpd = 0
        if key is not None and _needs_key_share(key):
            keys += [f"{acct}:krpm:{key.key_id}", f"{acct}:krpd:{key.key_id}"]
            key_rpm, key_rpd = key.requests_per_minute or 0, key.requests_per_day or 0
        try:
            await self._store.fcall(
                "klawd_lease_return_v1",
                keys,
                [lease.hold, max(lease.left, 0), max(lease.credit, 0), spec.requests_per_minute,
                 lease.day, key_rpm, key_rpd],
            )  # fmt: skip
        except Exception as exc:  # its credit comes back when its hold expires
            log.warning("giving back an admission lease of account %s failed: %s", account_id, exc)

    def end_leases(self, account_id: str | None = None) -> None:
        """Give back the leases of an account (every lease: None), e.g. its plan, limits or
        credit changed (`klawd:invalidate`): its next admissions are decided again."""
        for gate, seen in list(self._seen.items()):
            if account_id is None or gate[0] == account_id:
                self._give_back(gate, seen)

    def _forget_seen(self) -> None:
        self.end_leases()
        self._seen.clear()

    async def close(self) -> None:
        """Every lease given back, and waited for (the store's close)."""
        self.end_leases()
        if self._returns:
            await asyncio.gather(*self._returns, return_exceptions=True)

    def send_admit(
        self,
        account_id: str,
        spec: LimitSpec,
        reserve_micros: int,
        key: KeyGate | None = None,
        dropped: Dropped | None = None,
    ) -> tuple[asyncio.Future[Any], bool] | None:
        """`admit`'s call sent without waiting; `admission_of` turns its reply into the
        Admission. The reply's future and whether the call was written at once (else it is
        queued with the loop turn's commands: await it now). None: it cannot be sent without
        waiting (see RedisStore.send_packed_fcall), call `admit`; `admission_of` reads its reply.
        `dropped`: called with the Admission if the future is cancelled before the reply."""
        if not self._store.sends_packed:
            return None  # packed for nothing (a Redis Cluster; the library not loaded yet)
        if self._seen:
            count = self._lease_size((account_id, spec, key))
            if count:
                return self._send_lease((account_id, spec, key), count, reserve_micros, dropped)
        before, tail = self._sent_call(account_id, spec, key)
        undo = (
            None
            if dropped is None
            else functools.partial(self._undone, dropped, reserve_micros, key)
        )
        hold = ids.token_hex(8) if reserve_micros else ""  # `_hold`, inline
        reserve = str(reserve_micros)
        # the call as `fcall` sends it: [*head, reserve, *tail, hold, hold's length]
        payload = (
            before
            + (
                f"${len(reserve)}\r\n{reserve}\r\n{tail}${len(hold)}\r\n{hold}\r\n{self._hold_ms}"
            ).encode()
        )
        return self._store.send_packed_fcall(payload, undo)

    def admission_of(
        self, reply: Any, account_id: str, reserve_micros: int, key: KeyGate | None = None
    ) -> Admission | None:
        if isinstance(reply, Exception):  # an error reply, or the connection failed
            if type(reply) is RespReplyError:
                function = "klawd_admit_v3"
                if reply in self._lease_errors:  # the call asked for a lease too
                    function = "klawd_admit_lease_v1"
                    self._lease_errors.discard(reply)
                error = self._store.fcall_error(reply, function)
                if type(error) is LibraryMissing:  # it did not run: loaded again, call `admit`
                    return None
                raise error from reply
            if isinstance(reply, RespConnectionError):
                raise StoreError(f"redis store failed: {reply.__class__.__name__}") from reply
            raise reply
        if reply[10]:  # expired holds given back (only when the credit would refuse)
            holds_given_back(account_id, int(reply[10]))
        return _admission(reply, reserve_micros, True, key)

    async def admit(
        self,
        account_id: str,
        spec: LimitSpec,
        reserve_micros: int,
        key: KeyGate | None = None,
        dropped: Dropped | None = None,
    ) -> Admission:
        return await self._run(account_id, spec, reserve_micros, True, key, dropped)

    async def peek(self, account_id: str, spec: LimitSpec) -> Admission:
        return await self._run(account_id, spec, 0, consume=False)

    async def charge_tokens(
        self,
        account_id: str,
        spec: LimitSpec,
        tokens: int,
        charges: Charges = (),
        kept_s: float = 0.0,
    ) -> None:
        if not spec.tokens_per_minute or tokens <= 0:
            return
        acct = _acct(account_id)
        await self._store.fcall(
            "klawd_charge_tokens_v4",
            [f"{acct}:tpm", f"{acct}:charge_ids"],
            [
                spec.tokens_per_minute,
                tokens,
                math.ceil(kept_s * 1000),
                CHARGE_ID_MS,
                *(part for charge in charges for part in charge),
            ],
        )
