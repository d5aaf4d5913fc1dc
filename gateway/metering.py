"""Admission and settlement around one billable request (chat, messages, embeddings, images).

    ticket = await meter.admit(auth, request_id, requested, targets, reserve_for)
    ...call the upstream with ticket.targets...
    meter.settle(ticket, served_model, usage, images, status)   # ledger + release the rest

Admission is the one step every billable route takes: the key's model allowlist (403
`model_not_allowed`, or the targets it may use), then the account's and the key's limits and the
reservation of the worst-case cost (over the allowed targets) against the credit and the key's
budgets, decided together by the limiter. Raises PermissionDenied (403), RateLimited (429 +
Retry-After) or InsufficientCredits (402, code `key_budget_exceeded` for a key's budget); the
429 and 402, and every later error of the request, carry the x-ratelimit-* headers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING

import msgspec
from msgspec import Struct

from gateway import ids
from gateway.accounts import effective_limits
from gateway.auth import AuthContext
from gateway.billing import (
    MICROS_PER_USD,
    TokenUsage,
    estimate_tokens,
    model_cost_micros,
    worst_prices_micros,
)
from gateway.drain import OpenStreams, is_drain
from gateway.errors import (
    AuthenticationError,
    BadGateway,
    GatewayError,
    GatewayTimeout,
    InsufficientCredits,
    LedgerUnwritable,
    RateLimited,
    ServiceUnavailable,
    ShuttingDown,
    as_gateway_error,
)
from gateway.keys import allowed_targets
from gateway.limits import (
    Admission,
    DecidingLimiter,
    KeyGate,
    LeasingLimiter,
    Limiter,
    LimitSpec,
    SendingLimiter,
)
from gateway.pending_admission import (
    CLIENT_CLOSED,
    Admitting,
    DecidedAdmission,
    PendingAdmission,
)
from gateway.routing.catalog import CatalogEntry
from gateway.schemas.openai import ChatRequest
from gateway.settings import Settings
from gateway.store.base import Account, CustomLimits, Store, StoreError, UsageEntry
from gateway.token_charges import TokenCharges
from gateway.usage import UsageRecorder

if TYPE_CHECKING:
    from gateway.observer import RequestObserver

log = logging.getLogger("klawd")
# A stream's failure statuses after its first byte that count against its deployment's circuit:
# the upstream cut it or sent nonsense (502), said mid-stream it is overloaded or failing (503),
# went silent past the idle timeout (504). The relay says which failure was the upstream's (a
# shutdown's drain also settles with 503). Each with the gateway error type it is counted by in
# `klawd_upstream_body_errors_total`.
UPSTREAM_BROKE_OFF = {
    BadGateway.status: BadGateway.type,
    ServiceUnavailable.status: ServiceUnavailable.type,
    GatewayTimeout.status: GatewayTimeout.type,
}
# ... and the upstream's failures after the first byte that count as its body errors: those, and
# a rate limit it says mid-stream (left out of the circuit: the next calls' 429s rest it).
UPSTREAM_FAILED_MID_STREAM = UPSTREAM_BROKE_OFF | {RateLimited.status: RateLimited.type}

# Conservative token estimate for the reservation: one token per 3 characters, a few tokens of
# framing per message, and a large image's worth per image part (settlement uses real counts).
RESERVE_CHARS_PER_TOKEN = 3
RESERVE_TOKENS_PER_MESSAGE = 4
RESERVE_TOKENS_PER_IMAGE = 1600


def chat_estimates(request: ChatRequest, targets: list[CatalogEntry]) -> tuple[int, int]:
    """What a chat request's admission reserves and its upstream call counts, in one pass:
    (`reserve_for_chat`, `upstream_tokens_for_chat`). The chat route's, whose targets are the
    ones the key may use already; each model's prices worked out once (`worst_prices_micros`)."""
    chars, images, _, messages = request.prompt_counts
    n = request.n or 1
    output = request.output_budget * n
    prompt = (
        math.ceil(chars / RESERVE_CHARS_PER_TOKEN)
        + RESERVE_TOKENS_PER_MESSAGE * messages
        + RESERVE_TOKENS_PER_IMAGE * images
    ) * n
    most = 0  # (a loop, not max() of a list: one target is the usual case)
    for t in targets:
        model = t.model
        prompt_price, output_price = worst_prices_micros(
            model.input_usd_per_mtok, model.cache_write_usd_per_mtok, model.output_usd_per_mtok
        )
        scaled = prompt * prompt_price + output * output_price
        if scaled > most:
            most = scaled
    # the dearest target's cost, rounded up to the next whole micro-dollar (`token_cost_micros`)
    return -(-most // MICROS_PER_USD), estimate_tokens(chars) + output


def reserve_for_chat(request: ChatRequest, targets: list[CatalogEntry]) -> int:
    """Worst case over every target the request may fall back to."""
    return chat_estimates(request, targets)[0]


def upstream_tokens_for_chat(request: ChatRequest) -> int:
    """What an upstream counts against its tokens-per-minute limit when the request is sent:
    the prompt plus the output budget (settled to the actual usage afterwards)."""
    return chat_estimates(request, [])[1]


# gc=False: atoms, frozen Structs and the targets' list, never in a reference cycle: the cycle
# collector need not walk it, one per request (docs/decisions/0012, twenty-sixth pass).
class Ticket(Struct, gc=False):
    request_id: str
    account: Account
    key_id: str
    spec: LimitSpec
    admission: Admission
    started: float
    day: str  # the UTC day the reservation counts against (the key's budgets and the ledger)
    targets: list[CatalogEntry]  # what this key may use, in order: call only these
    # The token estimate reserved from the served deployment's upstream budget (routing/capacity.py)
    upstream_tokens: int = 0


class AccountCache:
    """account id -> Account for a few seconds; dropped at once when this process changes it
    (and, with Redis, when any replica does: see gateway/store/redis.py)."""

    def __init__(
        self, store: Store, ttl_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, tuple[float, Account]] = {}

    def cached(self, account_id: str) -> Account | None:
        """The account if this process holds it fresh (no await: the hot path's usual case)."""
        cached = self._entries.get(account_id)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        return None

    async def get(self, account_id: str) -> Account | None:
        cached = self.cached(account_id)
        if cached is not None:
            return cached
        account = await self._store.get_account(account_id)
        if account is not None:
            if len(self._entries) > 100_000:
                self._entries.clear()
            self._entries[account_id] = (self._clock() + self._ttl_s, account)
        return account

    def invalidate(self, account_id: str) -> None:
        self._entries.pop(account_id, None)

    def clear(self) -> None:
        self._entries.clear()


def limit_spec(settings: Settings, account: Account) -> LimitSpec:
    limits = effective_limits(settings, account)
    return LimitSpec(
        requests_per_minute=limits["requests_per_minute"] or 1,
        requests_per_day=limits["requests_per_day"] or 1,
        tokens_per_minute=limits["tokens_per_minute"],
    )


def key_gate(auth: AuthContext, day: str) -> KeyGate:
    policy = auth.policy
    return KeyGate(
        auth.key_id,
        day,
        policy.limits.requests_per_minute,
        policy.limits.requests_per_day,
        policy.budget,
    )


def ledger_id() -> str:
    """Unique (32 random bits per nanosecond) and in time order, so that the ledger's primary
    key index grows at its end instead of splitting pages all over (loadtests/bench/
    ledger_bench.py: about 30% less CPU per SQLite batch, more as the ledger grows)."""
    return f"use_{time.time_ns():016x}{ids.token_hex(4)}"


@functools.lru_cache(maxsize=8)
def _day_name(day_number: int) -> str:
    return datetime.fromtimestamp(day_number * SECONDS_PER_DAY, UTC).strftime("%Y-%m-%d")


def utc_day(ts: float) -> str:
    """ "YYYY-MM-DD" of a Unix time (UTC days have no leap seconds in Unix time)."""
    return _day_name(int(ts // SECONDS_PER_DAY))


SECONDS_PER_DAY = 86_400


DeniedBy = tuple[LimitSpec, tuple[int | None, int | None] | None]


def _limits_of(name: str, spec: LimitSpec, gate: KeyGate) -> DeniedBy:
    """The limits a remembered denial depends on: the plan's, and the key's for a key's own."""
    key_limits = (gate.requests_per_minute, gate.requests_per_day)
    return (spec, key_limits if name == gate.key_id else None)


def _rate_limit_message(spec: LimitSpec, gate: KeyGate, admission: Admission) -> str:
    if admission.limited_by_key:
        per_minute = gate.requests_per_minute or "no limit"
        per_day = gate.requests_per_day or "no limit"
        return f"Rate limit reached for this API key ({per_minute}/minute, {per_day}/day)."
    return (
        "Rate limit reached for your plan "
        f"({spec.requests_per_minute}/minute, {spec.requests_per_day}/day"
        + (f", {spec.tokens_per_minute} tokens/minute" if spec.tokens_per_minute else "")
        + ")."
    )


class Meter:
    def __init__(
        self,
        settings: Settings,
        accounts: AccountCache,
        limiter: Limiter,
        recorder: UsageRecorder,
        clock: Callable[[], float] = time.time,
        token_charges: TokenCharges | None = None,
    ) -> None:
        self._settings = settings
        self._accounts = accounts
        self._limiter = limiter
        # A served answer's tokens charged to its account's token limit, kept across an outage.
        self.token_charges = token_charges or TokenCharges(limiter)
        # The limiter's admission can be sent before it is awaited (Redis): `start` overlaps it.
        self.sender = limiter if isinstance(limiter, SendingLimiter) else None
        # ... and decided in process while the worker holds a lease (Redis, decision 0003).
        self.leaser = limiter if isinstance(limiter, LeasingLimiter) else None
        # ... or decided in one call, never in flight (the embedded store): `start` makes it
        # a DecidedAdmission, without the pending admission's gate.
        self.embedded = limiter if isinstance(limiter, DecidingLimiter) else None
        self._recorder = recorder
        self._clock = clock
        # Metrics and the request log line (gateway/observer.py); set by create_app.
        self.observer: RequestObserver | None = None
        # (served deployment, reserved tokens, used tokens) once a served request is settled:
        # the retrier's release (in flight, upstream token budget); set by build_state.
        self.on_served: Callable[[CatalogEntry, int, int], None] | None = None
        # A served stream the upstream broke off (settled 502 or 504): its circuit counts it.
        self.on_broke_off: Callable[[CatalogEntry], None] | None = None
        # The worker's open streams, which know the tasks the drain ended; set by build_state.
        self.streams: OpenStreams | None = None
        # account id (or key id, for a key's own limits) -> (monotonic time until which it is
        # surely denied, the limits that said so, the admission). A denial is exact until its
        # Retry-After: nothing another request or replica does can admit sooner, and a changed
        # plan or key changes the limits. So a throttled client costs no store round trip.
        self._denied: dict[str, tuple[float, DeniedBy, Admission]] = {}
        # (plan, custom limits) -> LimitSpec: the settings do not change in a running app, so
        # an account's spec is worked out once per distinct plan and limits, not per request.
        self._specs: dict[tuple[str, CustomLimits], LimitSpec] = {}

    def spec(self, account: Account) -> LimitSpec:
        key = (account.plan, account.limits)
        spec = self._specs.get(key)
        if spec is None:
            if len(self._specs) >= 100_000:
                self._specs.clear()
            spec = self._specs[key] = limit_spec(self._settings, account)
        return spec

    async def account(self, auth: AuthContext) -> Account:
        account = await self._accounts.get(auth.account_id)
        if account is None:
            raise AuthenticationError("The account of this API key no longer exists.")
        return account

    async def admit(
        self,
        auth: AuthContext,
        request_id: str,
        requested: str,
        targets: list[CatalogEntry],
        reserve_for: Callable[[list[CatalogEntry]], int] | int,
        allowed_already: bool = False,
    ) -> Ticket:
        """`requested`: the model id the request named; `targets`: what it resolved to;
        `reserve_for(targets)`: the worst-case cost over the targets the key may use (or that
        cost itself, worked out by a caller whose targets are `allowed_already`).
        `allowed_already`: `targets` is `allowed(...)`'s answer already (chat filters first, as
        its cache lookup is keyed by what the key may use): not filtered a second time.
        A request cancelled while its admission travels gives back what the admission took
        once the reply comes (`PendingAdmission.dropped`)."""
        pending = await self.start(
            auth, request_id, requested, targets, reserve_for, allowed_already
        )
        await pending.read_reply()
        return pending.ticket()

    async def start(
        self,
        auth: AuthContext,
        request_id: str,
        requested: str,
        targets: list[CatalogEntry],
        reserve_for: Callable[[list[CatalogEntry]], int] | int,
        allowed_already: bool = False,
    ) -> Admitting:
        """`admit`, but the admission's round trip (Redis) is only sent: the route prepares its
        upstream call under `PendingAdmission.overlapping` while the reply is on its way
        (gateway/admission_gate.py). The allowlist's 403 and an unknown account's 401 are raised
        here, as `admit` raises them; an embedded admission is decided here (a
        DecidedAdmission, its refusal raised here), and so is a Redis one admitted from the
        worker's lease."""
        if self._recorder.overflowing:
            raise LedgerUnwritable()
        allowed = targets if allowed_already else self.allowed(auth, requested, targets)
        reserve_micros = reserve_for if isinstance(reserve_for, int) else reserve_for(allowed)
        account = self._accounts.cached(auth.account_id) or await self.account(auth)
        # `spec(account)` and `utc_day(now)`, their remembered answers read inline
        spec = self._specs.get((account.plan, account.limits)) or self.spec(account)
        now = self._clock()
        gate = key_gate(auth, _day_name(int(now // SECONDS_PER_DAY)))
        admission = self._still_denied(account.id, spec, gate) if self._denied else None
        embedded = self.embedded
        if embedded is not None:  # decided in one call (reads first if the book asks them)
            remember = admission is None
            if admission is None:
                decided = embedded.decide(account.id, spec, reserve_micros, gate)
                admission = (
                    decided
                    if not isinstance(decided, int)
                    else await embedded.admit(account.id, spec, reserve_micros, gate)
                )
            ticket = self.admission_ticket(
                admission, request_id, account, auth.key_id, spec, gate, now, allowed,
                reserve_micros, remember,
            )  # fmt: skip
            return DecidedAdmission(self, ticket)
        sender = self.sender
        if admission is None and spec.tokens_per_minute and self.token_charges.kept:
            # tokens kept while the store was not reached are charged first: the account's
            # bucket they put in debt refuses this admission, as it would have without the outage
            await self.token_charges.landed(account.id)
        if admission is None and self.leaser is not None:
            admission = self.leaser.admit_leased(account.id, spec, reserve_micros, gate)
            if admission is None:
                asked = self.leaser.lease_asked(account.id, spec, gate)
                if asked is not None:  # a lease on its way: its reply comes before ours would
                    await asked
                    admission = self.leaser.admit_leased(
                        account.id, spec, reserve_micros, gate, counted=True
                    )
            if admission is not None:
                # Admitted in process from the lease, as the embedded store admits: decided
                # here, no pending admission, gate or context manager (decision 0010,
                # twenty-seventh pass).
                ticket = self.admission_ticket(
                    admission, request_id, account, auth.key_id, spec, gate, now, allowed,
                    reserve_micros,
                )  # fmt: skip
                return DecidedAdmission(self, ticket)
        if admission is None and sender is None:
            # decided in process (a cancellation there undoes itself), before the pending
            # admission is made: it is made decided
            admission = await self._limiter.admit(account.id, spec, reserve_micros, gate)
            if admission.outcome == "rate_limited":
                self._remember_denial(account.id, spec, gate, admission)
        pending = PendingAdmission(
            self, admission, request_id, account, auth.key_id, spec, gate, now, allowed,
            reserve_micros,
        )  # fmt: skip
        if admission is not None or sender is None:
            return pending
        # A reply that comes after the request was cancelled goes to `pending.dropped`.
        sent = sender.send_admit(account.id, spec, reserve_micros, gate, pending.dropped)
        if sent is not None:
            pending.sent(sent[0])
            if not sent[1]:
                # Queued with the loop turn's commands (under load): read now, decided before
                # the upstream call starts, as an awaited admission is (a refusal kept for
                # `ticket()`); one call built and sent.
                await pending.read_reply()
            return pending
        admission = await sender.admit(account.id, spec, reserve_micros, gate, pending.dropped)
        if admission.outcome == "rate_limited":
            self._remember_denial(account.id, spec, gate, admission)
        pending.decided(admission)
        return pending

    def admission_ticket(
        self,
        admission: Admission,
        request_id: str,
        account: Account,
        key_id: str,
        spec: LimitSpec,
        gate: KeyGate,
        now: float,
        allowed: list[CatalogEntry],
        reserve_micros: int,
        remember: bool = False,
    ) -> Ticket:
        """The admitted request's ticket, or the refusal's error (429, 402). `remember`: the
        admission came from the limiter just now (a denial is remembered until its
        Retry-After)."""
        outcome = admission.outcome
        if self.observer is not None:
            self.observer.admitted_or_refused(account.id, account.plan, outcome)
        if outcome != "admitted":
            self._refuse(admission, account, spec, gate, reserve_micros, remember)
        return Ticket(request_id, account, key_id, spec, admission, now, gate.day, allowed)

    def _refuse(
        self,
        admission: Admission,
        account: Account,
        spec: LimitSpec,
        gate: KeyGate,
        reserve_micros: int,
        remember: bool,
    ) -> None:
        """Raises a refused admission's error (429, 402) with the admission's headers."""
        if admission.outcome == "rate_limited":
            if remember:
                self._remember_denial(account.id, spec, gate, admission)
            error: GatewayError = RateLimited(
                _rate_limit_message(spec, gate, admission),
                retry_after_s=admission.retry_after_s
                if math.isfinite(admission.retry_after_s)
                else 86_400.0,
            )
        elif admission.outcome == "insufficient_credits":
            error = InsufficientCredits(
                "Your credit balance cannot cover this request's worst-case cost "
                f"(${reserve_micros / 1_000_000:.6f}); add credits or lower max_tokens."
            )
        elif admission.outcome == "key_budget_exceeded":
            error = InsufficientCredits(
                "This API key's budget cannot cover this request's worst-case cost "
                f"(${reserve_micros / 1_000_000:.6f}); raise the key's budget or lower "
                "max_tokens.",
                code="key_budget_exceeded",
            )
        else:  # (no other outcome: admitted, as before)
            return
        error.extra_headers.update(admission.headers())
        raise error

    @staticmethod
    def allowed(
        auth: AuthContext, requested: str, targets: list[CatalogEntry]
    ) -> list[CatalogEntry]:
        """The targets the key may use, in order (gateway/keys.py); 403 if none."""
        if not auth.policy.models:  # a key without an allowlist may use them all
            return targets
        named_directly = bool(targets) and targets[0].model.id == requested
        return allowed_targets(auth.policy.models, requested, targets, not named_directly)

    def _still_denied(self, account_id: str, spec: LimitSpec, gate: KeyGate) -> Admission | None:
        for name in (account_id, gate.key_id):
            denied = self._denied.get(name)
            if denied is None:
                continue
            until, denied_limits, admission = denied
            left = until - time.monotonic()
            if left <= 0 or denied_limits != _limits_of(name, spec, gate):
                del self._denied[name]
                continue
            return msgspec.structs.replace(admission, retry_after_s=left)
        return None

    def _remember_denial(
        self, account_id: str, spec: LimitSpec, gate: KeyGate, admission: Admission
    ) -> None:
        """A denial by the key's own limits is the key's; the plan's is the whole account's."""
        if not math.isfinite(admission.retry_after_s) or admission.retry_after_s <= 0:
            return
        if len(self._denied) >= 100_000:
            now = time.monotonic()
            self._denied = {k: v for k, v in self._denied.items() if v[0] > now}
        name = gate.key_id if admission.limited_by_key else account_id
        until = time.monotonic() + admission.retry_after_s
        self._denied[name] = (until, _limits_of(name, spec, gate), admission)

    def invalidated(self, kind: str, ident: str) -> None:
        """`klawd:invalidate`: an account's plan, limits or credit changed (or anything, "all"):
        its admission leases are given back, its next admissions decided again."""
        if self.leaser is not None and kind in ("account", "all"):
            self.leaser.end_leases(ident if kind == "account" else None)

    async def peek(self, account: Account) -> Admission:
        return await self._limiter.peek(account.id, self.spec(account))

    def settle(
        self,
        ticket: Ticket,
        served: CatalogEntry | None,
        usage: TokenUsage,
        images: int,
        status: int,
        stream: bool,
        broke_off: bool = False,
        failed: bool = False,
    ) -> int:
        """Queue the ledger entry (never awaits); returns the cost in micro-dollars.
        `broke_off`: a stream the upstream broke off after its first byte (counted against the
        served deployment's circuit). `failed`: a stream that ended on a failure after its
        first byte (`status` is its); the upstream's (`UPSTREAM_FAILED_MID_STREAM`) count as
        body errors of its provider: its headers came and were counted answered."""
        if served is None:
            cost = 0
        elif served.model.kind == "image":
            cost = images * round(served.model.usd_per_image * 1_000_000)
        else:
            if not usage.in_bounds():
                usage = counted(usage, served.model.id)
            cost = model_cost_micros(usage, served.model)
        now = self._clock()
        admission = ticket.admission
        # Positional, in the Struct's field order (named, msgspec took ~1 µs more per entry);
        # tests/unit/test_denial_cache.py checks each field by name.
        self._recorder.record(
            UsageEntry(
                ledger_id(),  # id
                now,  # ts
                ticket.day,  # day
                ticket.account.id,  # account_id
                ticket.key_id,  # key_id
                served.model.id if served else "",  # model
                served.model.provider if served else "",  # provider
                usage.prompt_tokens,  # prompt_tokens
                usage.completion_tokens,  # completion_tokens
                images,  # images
                cost,  # cost_micros
                admission.reserved_micros,  # reserved_micros
                round((now - ticket.started) * 1000),  # latency_ms
                status,  # status
                ticket.request_id,  # request_id
                stream,  # stream
                admission.key_reserved_micros,  # key_reserved_micros
                admission.hold_id,  # hold_id
            )
        )
        if self.observer is not None:
            self.observer.settled(served, usage, status, stream, cost)
            if failed and served is not None and status in UPSTREAM_FAILED_MID_STREAM:
                self.observer.upstream_body_failed(
                    served.model.provider, UPSTREAM_FAILED_MID_STREAM[status]
                )
        if served is not None and self.on_served is not None:
            self.on_served(served, ticket.upstream_tokens, usage.total_tokens)
            if broke_off and self.on_broke_off is not None:
                self.on_broke_off(served)
        return cost

    def settle_on_failure(self, ticket: Ticket, stream: bool) -> SettleOnFailure:
        """Around the upstream call of an admitted request: a failure settles the ticket at no
        cost (its reservation released), and the error carries the admission's headers. The
        ledger status is the error's, 499 for a cancellation (the client gone), the drain's 503
        for a shutdown's, 500 for anything else."""
        return SettleOnFailure(self, ticket, stream)

    async def charge_tokens(self, ticket: Ticket, usage: TokenUsage) -> None:
        if not ticket.spec.tokens_per_minute or usage.total_tokens <= 0:
            return  # nothing to charge (the limiters' own early return, without their call)
        if not usage.in_bounds():
            usage = usage.bounded()  # (said once, by `settle`, which gets the same usage)
        await self.token_charges.charge(
            ticket.account.id, ticket.spec, usage.total_tokens, ticket.request_id
        )


def counted(usage: TokenUsage, served: str) -> TokenUsage:
    """An upstream's usage with a count that is not one (negative, or past
    `billing.MAX_TOKEN_COUNT`) made 0, and said: the upstream reports nonsense. `served`: the
    model."""
    log.warning(
        "the upstream (%s) reported token counts that are not counts (prompt %d, completion %d, "
        "cached %d, cache write %d): counted as 0",
        served,
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cached_tokens,
        usage.cache_write_tokens,
    )
    return usage.bounded()


class SettleOnFailure:
    """`Meter.settle_on_failure`'s context manager (a class: no generator per request)."""

    __slots__ = ("meter", "stream", "ticket")

    def __init__(self, meter: Meter, ticket: Ticket, stream: bool) -> None:
        self.meter = meter
        self.ticket = ticket
        self.stream = stream

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            return
        if isinstance(exc, asyncio.CancelledError):  # not the gateway's failure: say why
            streams = self.meter.streams
            drained = is_drain(exc) if streams is None else streams.drained(exc)
            status = ShuttingDown.status if drained else CLIENT_CLOSED
        else:  # what the client is answered (a StoreError's 503)
            error = as_gateway_error(exc)
            status = 500 if error is None else error.status
        self.meter.settle(self.ticket, None, TokenUsage(0, 0), 0, status, self.stream)
        if isinstance(exc, GatewayError | StoreError):  # the envelope answers either
            exc.extra_headers.update(self.ticket.admission.headers())
