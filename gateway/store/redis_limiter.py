"""Admission on Redis: one `FCALL klawd_admit_v3` on Redis server time decides the account's
limits and credit reservation and the API key's limits and budget reservation together, so it is
exact across every worker and replica and costs one round trip (gateway/store/lua/klawd.lua).
A reservation is recorded as a hold with an expiry (`[store] reservation_hold_s`): settling
removes it, and one never settled (its worker killed, its reply lost) is given back once it
expired, by the account's next settlement or by an admission its credit would refuse."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import hiredis

from gateway import ids
from gateway.limits import Admission, Dropped, KeyGate, LimitSpec, Outcome
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


class RedisLimiter:
    """Admission in one FCALL on Redis server time: exact across every worker and replica."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        # (account, plan limits, key gate, consume) -> its call but the reservation: the same
        # few accounts and keys are admitted all day, so their key names are built once a day.
        self._calls: dict[tuple[str, LimitSpec, KeyGate | None, bool], _Call] = {}
        # (account, plan limits, key gate) -> `send_admit`'s call packed but for the
        # reservation and the hold: up to the reservation (with the call's count), and the
        # tail between them (`_sent_call`).
        self._sent_calls: dict[tuple[str, LimitSpec, KeyGate | None], tuple[bytes, str]] = {}
        self._hold_ms = _packed(store.reservation_hold_ms).decode()

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
            "klawd_admit_v3", keys, [*head, reserve, *tail, *self._hold(consume and reserve)], undo
        )
        if reply[10]:  # expired holds given back (only when the credit would refuse)
            self._store.holds_given_back(account_id, int(reply[10]))
        return _admission(reply, reserve, consume, key)

    def _hold(self, reserving: int | bool) -> tuple[str, int]:
        """The last two arguments of `klawd_admit_v3`: the id of the hold it records if it
        reserves (echoed in its reply), and the hold's length."""
        return (ids.token_hex(8) if reserving else "", self._store.reservation_hold_ms)

    def _undo(self, dropped: Dropped, reserve: int, key: KeyGate | None) -> Callable[[Any], None]:
        """The lean client's `undo` of an admission: its reply made an Admission for `dropped`
        (an error reply took nothing). A partial: no frame of its own per admission."""
        return functools.partial(self._undone, dropped, reserve, key)

    def _undone(self, dropped: Dropped, reserve: int, key: KeyGate | None, reply: Any) -> None:
        admission = self.reply_admission(reply, reserve, key)
        if admission is not None:
            dropped(admission)

    def reply_admission(
        self, reply: Any, reserve_micros: int, key: KeyGate | None = None
    ) -> Admission | None:
        if type(reply) is RespReplyError:
            return None
        return _admission(reply, reserve_micros, True, key)

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
                error = self._store.fcall_error(reply, "klawd_admit_v3")
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

    async def charge_tokens(self, account_id: str, spec: LimitSpec, tokens: int) -> None:
        if not spec.tokens_per_minute or tokens <= 0:
            return
        await self._store.fcall(
            "klawd_charge_tokens_v1",
            [f"{_acct(account_id)}:tpm"],
            [spec.tokens_per_minute, tokens],
        )
