"""An admission on its way: the route prepares its upstream call while the reply travels.

    pending = await meter.start(auth, request_id, requested, targets, reserve_for)
    result, served, ticket = await admitted_call(pending, retrier, attempt, stream, tokens)

What the gate holds back and why: gateway/admission_gate.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

from gateway.admission_gate import GATE, AdmissionRefused
from gateway.billing import TokenUsage
from gateway.errors import GatewayError, GatewayTimeout, cut_by_deadline
from gateway.limits import Admission, KeyGate, LimitSpec
from gateway.requestlog import RequestRecord, current_request
from gateway.routing.catalog import CatalogEntry
from gateway.routing.retry import any_failure, retryable
from gateway.store.base import Account

# The ledger status of a request whose client went away (nginx's convention): a stream the
# client abandoned (api/chat.py), an admission whose request was cancelled (`dropped`).
CLIENT_CLOSED = 499
DEADLINE_STATUS = GatewayTimeout.status
T = TypeVar("T")

if TYPE_CHECKING:
    from gateway.metering import Meter, Ticket
    from gateway.providers.base import UpstreamStream
    from gateway.routing.retry import Retrier


class PendingAdmission:
    """An admission that may still be on its way (`Meter.start`); the request's gate
    (gateway/admission_gate.py) while it is."""

    __slots__ = (
        "_admission",
        "_error",
        "_gate_token",
        "_meter",
        "_record",
        "_sent",
        "_status",
        "_ticket",
        "account",
        "key",
        "key_id",
        "now",
        "open",
        "request_id",
        "reserve_micros",
        "spec",
        "stream",
        "targets",
    )

    def __init__(
        self,
        meter: Meter,
        admission: Admission | None,
        request_id: str,
        account: Account,
        key_id: str,
        spec: LimitSpec,
        key: KeyGate,
        now: float,
        targets: list[CatalogEntry],
        reserve_micros: int,
    ) -> None:
        self._meter = meter
        self._sent: asyncio.Future[Any] | None = None  # the admission's call, reply not read yet
        self._admission = admission  # decided when it was started (embedded, or a denial kept)
        self._ticket: Ticket | None = None
        self._error: Exception | None = None
        self.open = False  # admitted (the gate lets everything through)
        self.request_id = request_id
        self.account = account
        self.key_id = key_id
        self.spec = spec
        self.key = key  # the API key's share of the admission
        self.now = now
        self.targets = targets  # what this key may use, in order: call only these
        self.reserve_micros = reserve_micros
        self.stream = False  # for the ledger entry of a dropped admission (`overlapping` sets it)
        self._gate_token: Any = None  # the gate set while the upstream call overlaps (`__aenter__`)
        self._record: RequestRecord | None = None  # its log line held for `dropped` (`abandon`)
        # The ledger status of an admission given back (`dropped`): the client gone, or 504
        # when the request's deadline cut its wait for the reply (gateway/routing/retry.py).
        self._status = CLIENT_CLOSED

    def sent(self, future: asyncio.Future[Any]) -> None:
        """The admission's call is on its way: its reply is `future` (`passed` reads it)."""
        self._sent = future

    def decided(self, admission: Admission) -> None:
        """The admission was awaited when it was started."""
        self._admission = admission

    def dropped(self, admission: Admission | None) -> None:
        """The reply of an admission whose request was cancelled before reading it (the client
        went away, or the request's deadline passed): what it took is given back, as a failed
        request's is (settled at no cost, ledger status 499, or 504 for the deadline: its
        reservation of credit and key budget released); a denial is
        remembered as an awaited one is; None: nothing admitted (an error reply, the connection
        lost). Called by the Redis client when the reply comes. The request's log line, held
        for it (`abandon`), is written then, with the ledger's status."""
        record = self._record
        if record is None:
            self._given_back(admission)
            return
        self._record = None
        observer = self._meter.observer
        assert observer is not None  # noqa: S101 (a record is held only with one)
        token = current_request.set(record)  # the Redis client's context is not the request's
        try:
            self._given_back(admission)
        finally:
            current_request.reset(token)
            observer.request_log.release(record)

    def _given_back(self, admission: Admission | None) -> None:
        meter = self._meter
        if admission is None:
            return
        if admission.outcome != "admitted":  # a refusal took nothing
            if admission.outcome == "rate_limited":
                meter._remember_denial(self.account.id, self.spec, self.key, admission)
            return
        ticket = meter.admission_ticket(
            admission, self.request_id, self.account, self.key_id, self.spec, self.key, self.now,
            self.targets, self.reserve_micros,
        )  # fmt: skip
        meter.settle(ticket, None, TokenUsage(0, 0), 0, self._status, self.stream)

    def abandon(self) -> None:
        """The request is cancelled before it read its admission's reply: the reply goes to
        `dropped` when it comes, or now if it is here already."""
        sent = self._sent
        if sent is None:
            return
        self._sent = None
        if not sent.done():
            sent.cancel()  # the Redis client hands its reply to `dropped`
            self._hold_line()
            return
        if sent.cancelled():  # cancelled while awaited: handed to `dropped` too
            self._hold_line()
            return
        if sent.exception() is not None:
            return  # the store failed
        sender = self._meter.sender
        assert sender is not None  # noqa: S101 (only a sending limiter sends)
        admission = sender.reply_admission(sent.result(), self.reserve_micros, self.key)
        if admission is not None:
            self.dropped(admission)

    def _hold_line(self) -> None:
        """The request's log line waits for `dropped`: its ledger status (499 if the reply
        admitted) is known only then, after the response has ended."""
        observer = self._meter.observer
        record = current_request.get()
        if observer is not None and record is not None:
            observer.request_log.hold(record)
            self._record = record

    @property
    def in_flight(self) -> bool:
        """The admission's reply is still to be read: the upstream call runs under the gate."""
        return self._sent is not None

    async def passed(self) -> None:
        """The gate: reads the admission's reply (once); AdmissionRefused unless it admitted."""
        if self._sent is not None:
            await self.read_reply()
        if not self.open:
            raise AdmissionRefused

    async def read_reply(self) -> None:
        """Reads the admission's reply if it is still on its way, a refusal or the store's error
        kept for `ticket()`; cancelled meanwhile, what the admission took is given back
        (`abandon`). (The future awaited here, no coroutine of the limiter's in between: under
        load `Meter.start` reads every queued admission through this.)"""
        sent = self._sent
        if sent is None:
            return
        try:
            try:
                reply = await sent
            except Exception as exc:  # the connection failed: `admission_of` says how
                reply = exc
            sender = self._meter.sender
            assert sender is not None  # noqa: S101 (only a sending limiter sends)
            try:
                admission = sender.admission_of(
                    reply, self.account.id, self.reserve_micros, self.key
                )
                if admission is None:  # Redis had forgotten its functions: called once more
                    admission = await sender.admit(
                        self.account.id, self.spec, self.reserve_micros, self.key, self.dropped
                    )
                self._decide(admission, remember=True)
            except Exception as exc:  # the store failed: its error is the request's answer
                self._error = exc
            self._sent = None
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and cut_by_deadline(exc):
                self._status = DEADLINE_STATUS
            self.abandon()
            raise

    def ticket(self) -> Ticket:
        """The admitted request's ticket; raises the refusal's error (429, 402, the store's) as
        `Meter.admit` does. The admission must be decided: started so, or its gate passed (or
        refused)."""
        if self._ticket is not None:
            return self._ticket
        if self._error is None:
            if self._admission is None:
                raise RuntimeError("the admission's reply has not been read")
            try:
                self._decide(self._admission)
            except Exception as exc:
                self._error = exc
        if self._error is not None:
            raise self._error
        assert self._ticket is not None  # noqa: S101 (decided and no error)
        return self._ticket

    def _decide(self, admission: Admission, remember: bool = False) -> None:
        self._ticket = self._meter.admission_ticket(
            admission, self.request_id, self.account, self.key_id, self.spec, self.key, self.now,
            self.targets, self.reserve_micros, remember,
        )  # fmt: skip
        self.open = True

    def overlapping(self, stream: bool) -> PendingAdmission:
        """`async with pending.overlapping(stream):` around the route's upstream call (the
        pending admission is its own context manager: no object per request). An admission
        decided when it was started is answered on entry (a refusal raised before any upstream
        work, as an awaited admission was); one in flight gates the call
        (gateway/admission_gate.py) and is decided on the way out at the latest. On a failure
        the admission's refusal is raised first; an admitted request's failure is settled at no
        cost with the admission's headers on its error (`Meter.settle_on_failure`)."""
        self.stream = stream
        return self

    async def __aenter__(self) -> None:
        if self._sent is not None:  # in flight
            self._gate_token = GATE.set(self)
        else:
            self.ticket()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._gate_token is not None:
            GATE.reset(self._gate_token)
            self._gate_token = None
        if exc is not None and not isinstance(exc, Exception):
            if self.open:  # cancelled: an admitted request is settled, without waiting
                self._settle_failure(kind, exc, traceback)
            else:  # cancelled before the reply was read: what it took is given back
                self.abandon()
            return
        if self._sent is not None:  # the call never reached the gate (or failed before it)
            await self.read_reply()
        if exc is not None:
            if self._ticket is None and self._error is None and self._admission is None:
                # Undecided: given back while the call waited at the gate (the request's
                # deadline cut that wait); its reply settles it (`dropped`), the error stands.
                return
            self._settle_failure(kind, exc, traceback)  # a refusal is raised first
        # else the route takes the ticket (on a refusal it undoes what the call holds)

    def _settle_failure(
        self,
        kind: type[BaseException] | None,
        exc: BaseException,
        traceback: TracebackType | None,
    ) -> None:
        failure = self._meter.settle_on_failure(self.ticket(), self.stream)
        failure.__exit__(kind, exc, traceback)


class DecidedAdmission:
    """An admission decided when it was started: the embedded store's, or a Redis one admitted
    from the worker's lease (never in flight, so no gate, no reply to read or to give back): the
    route's side of PendingAdmission alone. A refusal was raised by `Meter.start`; an admitted
    request's failure is settled at no cost with the admission's headers on its error
    (`failed`: the retrier calls it, `admitted_call` handing it the admission; `overlapping`'s
    way out too)."""

    __slots__ = ("_meter", "admitted", "stream", "targets")

    def __init__(self, meter: Meter, ticket: Ticket) -> None:
        self._meter = meter
        self.admitted = ticket  # returned with the served result (Retrier.call_targets)
        self.targets = ticket.targets  # what this key may use, in order: call only these
        self.stream = False  # the call opens a stream (its failure's ledger entry says so)

    async def read_reply(self) -> None:
        """Nothing on its way (PendingAdmission's)."""

    def ticket(self) -> Ticket:
        return self.admitted

    def overlapping(self, stream: bool) -> DecidedAdmission:
        """`async with admission.overlapping(stream):` around the route's upstream call."""
        self.stream = stream
        return self

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.failed(exc)

    def failed(self, exc: BaseException) -> None:
        """The upstream call failed, or was cancelled: the admitted request is settled at no
        cost, with the admission's headers on its error (`Meter.settle_on_failure`)."""
        failure = self._meter.settle_on_failure(self.admitted, self.stream)
        failure.__exit__(type(exc), exc, exc.__traceback__)


# What `Meter.start` returns: an admission on its way (Redis), or decided (embedded, or a
# Redis one admitted from the worker's lease).
Admitting = PendingAdmission | DecidedAdmission


def admitted_call(
    pending: Admitting,
    retrier: Retrier,
    attempt: Callable[[CatalogEntry], Awaitable[T]],
    stream: bool,
    tokens: int = 0,
    may_retry: Callable[[GatewayError], bool] = retryable,
    may_fall_back: Callable[[GatewayError], bool] = any_failure,
) -> Awaitable[tuple[T, CatalogEntry, Ticket]]:
    """The route's upstream call under its admission: `attempt` tried by `retrier` over the
    targets the key may use (`may_retry` / `may_fall_back`: Retrier.call_targets'), and the
    served call's ticket (`served_ticket`). `stream`: the call opens a stream (the ledger
    entry of a failure says so; a refused one is closed).

    A decided admission (embedded, or from a Redis lease) has no gate to hold, no reply to
    read and no refusal left: the call is the retrier's own awaitable, handed the admission
    (its ticket returned with the result, its `failed` settling a failure or a cancellation
    at no cost), with no coroutine or context manager of ours around it (`async with` and
    its two coroutines were ~3K instructions a request, a coroutine ~1.1K). One that may be
    on its way runs under `overlapping` (gateway/admission_gate.py)."""
    if isinstance(pending, DecidedAdmission):
        pending.admitted.upstream_tokens = tokens  # (`served_ticket`'s: nothing can refuse)
        pending.stream = stream
        return retrier.call_targets(
            pending.targets, attempt, may_retry, may_fall_back, tokens, pending
        )
    return _overlapping_call(pending, retrier, attempt, stream, tokens, may_retry, may_fall_back)


async def _overlapping_call(
    pending: PendingAdmission,
    retrier: Retrier,
    attempt: Callable[[CatalogEntry], Awaitable[T]],
    stream: bool,
    tokens: int,
    may_retry: Callable[[GatewayError], bool],
    may_fall_back: Callable[[GatewayError], bool],
) -> tuple[T, CatalogEntry, Ticket]:
    """`admitted_call` of an admission that may be on its way."""
    async with pending.overlapping(stream):
        result, served, _ = await retrier.call_targets(
            pending.targets, attempt, may_retry, may_fall_back, tokens
        )
    try:
        return result, served, served_ticket(pending, retrier, served, tokens)
    except Exception:
        if stream:  # refused: the stream opened is closed
            await cast("UpstreamStream", result).aclose()
        raise


def served_ticket(
    pending: PendingAdmission, retrier: Retrier, served: CatalogEntry, tokens: int
) -> Ticket:
    """The ticket of a served call, with its upstream token estimate. A call whose admission
    was not admitted by the time it was served (possible only for a call that never went
    through the gate: klawd/echo answers in process) has its refusal raised, after undoing
    what the call holds (the served deployment's place in flight and its token estimate; a
    stream is closed by the caller)."""
    try:
        ticket = pending._ticket or pending.ticket()  # the ticket, once decided (no call)
    except Exception:
        retrier.release(served, tokens, 0)
        raise
    ticket.upstream_tokens = tokens
    return ticket
