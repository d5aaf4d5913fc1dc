"""Retries of one model's deployments, then the next model: shared by every provider, naming none.

    result, served, tries = await retrier.call_targets(targets, attempt, tokens=estimate)

`targets` are models (the request's, then its fallbacks); `served` is the deployment that
answered (routing/catalog.py). For each model in order:

- the deployments that can serve now (available, circuit closed or probing, not resting, under
  their provider's caps: routing/capacity.py) in the balancer's order (routing/balance.py);
- a failed try moves at once to a sibling deployment not yet tried by this request; when every
  one has failed, a failure marked `retryable` (connect errors, timeouts before the first byte,
  429, 500, 502, 503, 504) sleeps U(0, min(max_delay_s, base_delay_s * 2^n)) (full jitter), or
  the upstream's Retry-After when it is longer, and tries them again; at most
  max(`attempts`, number of deployments) tries per model. A Retry-After above
  `max_retry_after_s` is not waited for: the next model is tried at once;
- an upstream 429 rests that deployment until its Retry-After (or x-ratelimit-reset-*); a
  circuit that opens rests it `cooldown_s` (on Redis: on every replica).

With `[retry] deadline_s` set, the request's deadline (counted from this call) bounds it all:
each try is cut when it passes (504 `gateway_timeout`, code `deadline_exceeded`; nothing is
tried after it); a try is not sent once it has passed (in the gateway's own waits before it:
the call ends as when it passes between tries), and the request's admission still on its way
at its first try is awaited under the same cut (the 504; the admission given back when its
reply comes); a Retry-After or a resting deployment's return
past it is not waited for (the next model is tried at once, else the call ends with the last
failure's own error, or the deadline's 504 when nothing was tried), and the jitter's ceiling is
at most the time left. A try the deadline cut never counts against its deployment's circuit
(the request ran out of time, not the deployment: its own timeouts still count). Unset: none of
this, and no clock read or check beyond one test per call (docs/decisions/0005).

Other upstream failures (a nonsense answer, the upstream refusing our key) skip to the next
deployment, then model. Client errors (400, 413, …) end the call at once. When nothing could be
tried (every deployment resting or capped): 429 `rate_limit_exceeded`, code `upstream_capacity`,
Retry-After = the earliest back (open circuits only: 503, as before). Everything here happens
before the first byte reaches the client; nothing is retried after it.

The served deployment stays counted in flight (least-busy, least-latency) and its token estimate
stays reserved from its provider's budget until `release` (called once the request is settled).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from msgspec import Struct

from gateway.admission_gate import GATE, closed_gate
from gateway.errors import (
    DEADLINE_EXCEEDED,
    BadGateway,
    DeadlineCut,
    GatewayError,
    GatewayTimeout,
    RateLimited,
    ServiceUnavailable,
)
from gateway.requestlog import RequestRecord, current_request
from gateway.routing.balance import Balancer
from gateway.routing.capacity import Capacity, MemoryCapacity
from gateway.routing.catalog import CatalogEntry
from gateway.routing.health import Health
from gateway.settings import RetrySettings
from gateway.timer_wheel import TimerWheel

if TYPE_CHECKING:
    from gateway.observer import RequestObserver
    from gateway.tracing import Tracing
    from gateway.tracing.otel import ClientSpan

T = TypeVar("T")
R = TypeVar("R")

# Upstream failures after which the next target (a route's, or a model's fallback) is tried.
FALLBACK_ON = (ServiceUnavailable, RateLimited, GatewayTimeout, BadGateway)


class Attempt(Struct, frozen=True):
    model: str
    error: str | None  # the gateway error type of a failed try, None for the one that served
    slept_s: float
    provider: str = ""  # the deployment's


def upstream_capacity(retry_after_s: float) -> RateLimited:
    return RateLimited(
        "Every deployment that could serve this request is resting or at its upstream "
        "capacity; retry later.",
        code="upstream_capacity",
        retry_after_s=max(retry_after_s, 0.001),
    )


def retryable(exc: GatewayError) -> bool:
    """The default retry policy: the failure says whether trying again may help."""
    return exc.retryable


def any_failure(exc: GatewayError) -> bool:
    """The default fallback policy: any upstream failure moves on to the next target."""
    return True


def never_sent(exc: GatewayError) -> bool:
    """Image generation's policy, to retry and to fall back: only after a failure that provably
    never reached the upstream (a connect error), which may have generated already otherwise."""
    return exc.connect_failed


class DecidedCall(Protocol[R]):
    """A call whose admission was decided before it (gateway/pending_admission.py's
    `DecidedAdmission`), handed to `Retrier.call_targets`."""

    admitted: R  # returned with the served result (the admission's ticket)

    def failed(self, exc: BaseException) -> None:
        """Called once if the whole call fails or is cancelled (the admission settled)."""


class _ModelOutcome(Struct):
    """What trying one model's deployments came to, when none served."""

    error: GatewayError | None  # the last failure of a try
    back_in_s: float | None = None  # nothing could be tried: the earliest deployment back
    failing: bool = False  # ... and every one was resting for failing (open circuits)
    cut: bool = False  # the request's deadline cut a try (or passed before one left): no more


def backoff_delay(
    retry: int, policy: RetrySettings, rng: random.Random, left_s: float = math.inf
) -> float:
    """Full jitter: U(0, min(cap, base * 2^retry)) for the retry-th retry (0-based), the
    ceiling at most `left_s` (the time left before the request's deadline)."""
    return rng.uniform(0.0, min(policy.max_delay_s, policy.base_delay_s * (2**retry), left_s))


class _Unsent(Exception):
    """A try not sent: the request's deadline passed before it could leave (in the gateway's
    own waits: the shared store's capacity take)."""


class _Cut:
    """A try's end at the request's deadline: once due, it cancels the request's task (an
    entry of the retrier's timer wheel, called at most RESOLUTION_S late: a loop timer and an
    `asyncio.timeout` per try cost ~31K instructions, docs/decisions/0005)."""

    __slots__ = ("cancelling", "done", "fired", "task")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.cancelling = task.cancelling()  # cancellations already asked for, not ours
        self.fired = False
        self.done = False  # the try is over (set by `_before_deadline`)

    def on_due(self) -> None:
        # One loop turn later: the task may already be woken with its answer, read in this
        # very turn (a wake-up queued before this call). Cancelled now, it would get the
        # CancelledError instead of that answer: an answer in hand, billed upstream, thrown
        # away for a 504. The wake-up runs first, and the try either ends (done) or waits
        # again for more of its answer, where it is cut.
        self.task.get_loop().call_soon(self._cut)

    def _cut(self) -> None:
        if self.done:
            return
        self.fired = True
        # named, with the count it is read against, so that the call it cuts can tell it from a
        # client gone (HttpProvider._send counts a cut upstream call as a failure)
        self.task.cancel(DeadlineCut(self.cancelling))


async def _admitted() -> None:
    """Waits for the request's admission if it is still on its way (gateway/admission_gate.py):
    AdmissionRefused if it refused."""
    gate = closed_gate()
    if gate is not None:
        await gate.passed()


def _final_error(outcomes: list[_ModelOutcome]) -> GatewayError:
    """What a call raises when no model served: the last failure of a try; else (nothing could
    be tried) 503 when every deployment rests for failing, 429 `upstream_capacity` otherwise,
    with Retry-After the earliest back."""
    last_error: GatewayError | None = None
    back_in: list[float] = []
    only_failing = True
    for outcome in outcomes:
        if outcome.error is not None:
            last_error = outcome.error
        if outcome.back_in_s is not None:
            back_in.append(outcome.back_in_s)
            only_failing = only_failing and outcome.failing
    if last_error is not None:
        return last_error
    wait = min(back_in) if back_in else 0.0
    if only_failing:
        return ServiceUnavailable(
            "Every model that could serve this request is failing right now (circuit open).",
            retry_after_s=wait,
        )
    return upstream_capacity(wait)


class Retrier:
    def __init__(
        self,
        policy_for: Callable[[CatalogEntry], RetrySettings],
        health: Health,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        balancer: Balancer | None = None,
        capacity: Capacity | None = None,
        cooldown_s: float = 30.0,
        deadline_s: float | None = None,
    ) -> None:
        """`deadline_s`: `[retry] deadline_s`, the request's (never a provider's: a request's
        deadline spans every provider it falls back to); None, no deadline."""
        if deadline_s is not None and deadline_s <= 0:
            raise ValueError("deadline_s must be positive")
        self._policy_for = policy_for
        self._health = health
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not secrets)
        self._sleep = sleep
        self._clock = clock
        self.balancer = balancer or Balancer("weighted")
        self.capacity: Capacity = capacity or MemoryCapacity(clock)
        self._cooldown_s = cooldown_s
        self._deadline_s = deadline_s
        self._cuts: TimerWheel | None = None  # the tries' cuts at their request's deadline
        self._resting: set[asyncio.Task[None]] = set()  # broke_off's rests, until they are done
        # Retry and fallback counters (gateway/observer.py); set by create_app.
        self.observer: RequestObserver | None = None
        # Traces on: a client span per attempt (gateway/tracing/); set by create_app.
        self.tracing: Tracing | None = None

    @overload
    def call_targets(
        self,
        targets: list[CatalogEntry],
        attempt: Callable[[CatalogEntry], Awaitable[T]],
        may_retry: Callable[[GatewayError], bool] = ...,
        may_fall_back: Callable[[GatewayError], bool] = ...,
        tokens: int = ...,
        decided: None = None,
    ) -> Awaitable[tuple[T, CatalogEntry, list[Attempt]]]: ...

    @overload
    def call_targets(
        self,
        targets: list[CatalogEntry],
        attempt: Callable[[CatalogEntry], Awaitable[T]],
        may_retry: Callable[[GatewayError], bool],
        may_fall_back: Callable[[GatewayError], bool],
        tokens: int,
        decided: DecidedCall[R],
    ) -> Awaitable[tuple[T, CatalogEntry, R]]: ...

    def call_targets(
        self,
        targets: list[CatalogEntry],
        attempt: Callable[[CatalogEntry], Awaitable[T]],
        may_retry: Callable[[GatewayError], bool] = retryable,
        may_fall_back: Callable[[GatewayError], bool] = any_failure,
        tokens: int = 0,
        decided: DecidedCall[Any] | None = None,
    ) -> Awaitable[tuple[T, CatalogEntry, Any]]:
        """`may_retry` / `may_fall_back` narrow what is tried again: image generation passes
        `never_sent` for both, as the upstream may have generated already.
        `tokens`: the request's estimate, reserved from a capped provider's token budget.
        One target (no fallback): its model's own loop is the awaitable, raising what this
        would (no coroutine of ours around it, resumed on every step of the call).

        `decided`: the call's admission, decided before it (DecidedCall): served,
        `decided.admitted` comes back in place of the tries; failed or cancelled,
        `decided.failed(exc)` is called once, in the call's own outermost frame, before the
        error goes on, so that the caller needs no coroutine of its own around the call (an
        `async def` awaited is ~1.1K instructions a request: decision 0011, 19zzzzza)."""
        deadline = self._deadline_s and self._clock() + self._deadline_s  # None: no deadline
        if len(targets) == 1:
            # Alone, the model's loop raises rather than returns an outcome (typing.cast would
            # be a Python call per request).
            return self._serve_model(  # type: ignore[return-value]
                targets[0], attempt, may_retry, may_fall_back, tokens, [], True, deadline, decided
            )
        return self._call_in_turn(
            targets, attempt, may_retry, may_fall_back, tokens, deadline, decided
        )

    async def _call_in_turn(
        self,
        targets: list[CatalogEntry],
        attempt: Callable[[CatalogEntry], Awaitable[T]],
        may_retry: Callable[[GatewayError], bool],
        may_fall_back: Callable[[GatewayError], bool],
        tokens: int,
        deadline: float | None,
        decided: DecidedCall[Any] | None,
    ) -> tuple[T, CatalogEntry, Any]:
        tries: list[Attempt] = []
        outcomes: list[_ModelOutcome] = []
        try:
            for index, target in enumerate(targets):
                if index:
                    if deadline is not None and (outcomes[-1].cut or self._clock() >= deadline):
                        break  # the deadline passed: the last failure stands
                served = await self._serve_model(
                    target, attempt, may_retry, may_fall_back, tokens, tries, False, deadline,
                    decided,
                )  # fmt: skip
                if not isinstance(served, _ModelOutcome):
                    return served
                outcomes.append(served)
            raise _final_error(outcomes)
        except BaseException as exc:
            if decided is not None:
                decided.failed(exc)
            raise

    def _servable(
        self, target: CatalogEntry, failed: set[str] | None
    ) -> tuple[Sequence[CatalogEntry], float]:
        """The deployments not yet failed in this round whose circuit lets a call through (the
        model's own tuple when that is all of them), and the seconds until the earliest open
        circuit among the others lets one through."""
        health = self._health
        deployments = target.deployments or (target,)
        if failed is None and target.all_available and health.all_closed:
            return deployments, 0.0
        servable = []
        reopens: float | None = None
        for deployment in deployments:
            if (failed is not None and deployment.key in failed) or not deployment.available:
                continue
            if health.can_serve(deployment.key):
                servable.append(deployment)
            else:
                wait = health.reopens_in(deployment.key)
                reopens = wait if reopens is None else min(reopens, wait)
        return servable, reopens or 0.0

    async def _serve_model(
        self,
        target: CatalogEntry,
        attempt: Callable[[CatalogEntry], Awaitable[T]],
        may_retry: Callable[[GatewayError], bool],
        may_fall_back: Callable[[GatewayError], bool],
        tokens: int,
        tries: list[Attempt],
        alone: bool,
        deadline: float | None,
        decided: DecidedCall[Any] | None,
    ) -> tuple[T, CatalogEntry, Any] | _ModelOutcome:
        """One model's deployments tried; `alone`: the call's only model, whose outcome when
        none served is raised here (call_targets' error) rather than returned, and whose
        failure `decided` is told of (else `_call_in_turn` tells it). `deadline`: the
        request's, on the retrier's clock (None: unbounded but for each try's own bounds)."""
        deployments = target.deployments or (target,)
        health = self._health
        # The retry policy and the tries' budget are first needed once a try failed (the
        # first try is always allowed: `attempts` is at least 1).
        policy: RetrySettings | None = None
        budget = 1
        failed: set[str] | None = None  # deployments that failed since the last backoff
        failures: set[str] = set()  # deployments that failed this request (recorded at the end)
        error: GatewayError | None = None  # the last failure of a try
        made = 0  # tries of this model
        waits = 0
        slept = 0.0
        started = 0.0  # the first try's start (the failures' latency, recorded at the end)
        try:
            try:
                while made < budget:
                    if deadline is not None:
                        if made:  # (read before each try but the model's first)
                            now = self._clock()
                            if now >= deadline:  # it passed between tries: the last failure stands
                                return self._outcome(_ModelOutcome(error), alone)
                        gate = GATE.get()
                        if gate is not None and not gate.open:
                            # The request's own admission still on its way (before its first try):
                            # awaited here, under the cut, so that every later wait of this try
                            # finds it decided. Its reply is the deadline's like any wait: a store
                            # that does not answer holds the request no longer than the deadline
                            # (cut, the admission is given back when its reply comes:
                            # PendingAdmission.read_reply), not until the store's command timeout.
                            try:
                                await self._before_deadline(gate.passed(), deadline - self._clock())
                            except GatewayTimeout as exc:  # (the cut's: `passed` raises no other)
                                return self._outcome(_ModelOutcome(exc, cut=True), alone)
                    if failed is None and target.all_available and health.all_closed:
                        servable: Sequence[CatalogEntry] = deployments  # `_servable`'s first answer
                        reopens_s = 0.0
                    else:
                        servable, reopens_s = self._servable(target, failed)
                    ordered = self.balancer.order(servable) if len(servable) > 1 else servable
                    taken = self.capacity.take_local(ordered, tokens)
                    if taken is None:
                        await _admitted()  # a take on the shared store
                        taken = await self.capacity.take(ordered, tokens)
                    deployment = taken.deployment
                    if deployment is None:
                        back, failing = (
                            (taken.back_in_s, taken.failing) if servable else (reopens_s, True)
                        )
                        if error is None:  # nothing tried: every deployment rests or is capped
                            return self._outcome(_ModelOutcome(None, back, failing), alone)
                        if policy is None:
                            policy = self._policy_for(deployments[0])
                        left = math.inf if deadline is None else deadline - now
                        if not self._waits(error, back, policy, may_retry, left) or waits >= budget:
                            return self._outcome(_ModelOutcome(error), alone)
                        # every deployment failed (or rests briefly): back off, then again
                        delay = max(backoff_delay(waits, policy, self._rng, left), back)
                        if error.retry_after_s is not None:
                            delay = max(delay, error.retry_after_s)
                        waits += 1
                        await self._sleep(delay)
                        slept = delay
                        failed = None
                        continue
                    made += 1
                    key = deployment.key
                    if not health.all_closed:
                        # a half-open circuit's probe is claimed for an admitted call
                        await _admitted()
                        health.claim(key)  # (a no-op while every circuit is closed)
                    self.balancer.started(key)
                    call_started = self._clock()
                    if made == 1:
                        started = call_started
                    # Traces on: the attempt's client span (gateway/tracing/), ended with its error
                    # type (a gateway error's, else the exception's class) or None
                    span = record = None
                    tracing = self.tracing
                    try:
                        if tracing is not None:
                            # _admitted() inline, no call: no attempt span for a refused request
                            gate = GATE.get()
                            if gate is not None and not gate.open:
                                await gate.passed()
                            record = current_request.get()
                            if record is not None:
                                span = tracing.start_attempt(record, deployment, len(tries))
                        if deadline is None:
                            if tries and self.observer is not None:
                                self._moved_on(self.observer, made, tries)
                            result = await attempt(deployment)
                        else:
                            # read as it leaves: the waits since the deadline began (the admission's
                            # reply, a shared capacity take) are the deadline's too
                            left = deadline - self._clock()
                            if left <= 0:
                                # sent, it would be cut at once, maybe generated and billed
                                # upstream for nothing
                                raise _Unsent
                            if tries and self.observer is not None:
                                self._moved_on(self.observer, made, tries)
                            result = await self._before_deadline(attempt(deployment), left)
                    except _Unsent:
                        if span is not None and tracing is not None and record is not None:
                            tracing.drop_attempt(record)  # no upstream attempt: no client span
                        self.release(deployment, tokens, 0)
                        if not health.all_closed:
                            health.release(key)  # nothing to record of a deployment not asked
                        # the deadline passed between tries: the last failure stands, as at the
                        # loop's top; nothing tried yet, the deadline's 504
                        if error is None and not tries:
                            error = self._deadline_exceeded()
                        return self._outcome(_ModelOutcome(error, cut=True), alone)
                    except FALLBACK_ON as exc:
                        if span is not None:
                            self._end_span(record, span, exc.type)
                        self.release(deployment, tokens, 0)
                        # Failed before it reached an upstream (the admission still on its way):
                        # nothing is recorded, rested or tried again for a refused request.
                        await _admitted()
                        if policy is None:
                            policy = self._policy_for(deployments[0])
                            budget = max(policy.attempts, len(deployments))
                        provider = deployment.model.provider
                        tries.append(Attempt(target.model.id, exc.type, slept, provider))
                        slept = 0.0
                        failed = failed or set()
                        failed.add(key)
                        cut = deadline is not None and exc.code == DEADLINE_EXCEEDED
                        if cut:
                            # The request's deadline ran out, not the deployment: that says nothing
                            # of it (a probe it claimed goes to the next call). Its own timeouts,
                            # when shorter, fire first and count (docs/decisions/0005, 19zzt).
                            if not health.all_closed:
                                health.release(key)
                        else:
                            failures.add(key)
                        error = exc
                        if cut:
                            return self._outcome(_ModelOutcome(exc, cut=True), alone)
                        if isinstance(exc, RateLimited) and exc.retry_after_s:
                            await self._rest(key, exc.retry_after_s, failing=False)
                        if not may_fall_back(exc) and not may_retry(exc):
                            raise
                        if not may_retry(exc) and not self._servable(target, failed)[0]:
                            return self._outcome(_ModelOutcome(error), alone)
                        continue
                    except BaseException as exc:
                        if span is not None:
                            failure = (
                                exc.type if isinstance(exc, GatewayError) else type(exc).__name__
                            )
                            self._end_span(record, span, failure)
                        self.release(deployment, tokens, 0)
                        if not health.all_closed:
                            health.release(key)  # a probe that told nothing: the next one probes
                        raise
                    if span is not None and tracing is not None and record is not None:
                        tracing.end_attempt(record, span, None)  # inline: the served attempt's
                    latency = self._clock() - call_started
                    health.record(key, ok=True, latency_s=latency)
                    if self.balancer.policy == "least-latency":
                        self.balancer.observe(key, latency)
                    if failures:
                        failures.discard(key)
                    tries.append(Attempt(target.model.id, None, slept, deployment.model.provider))
                    return result, deployment, tries if decided is None else decided.admitted
                return self._outcome(_ModelOutcome(error), alone)
            finally:
                for key in failures:
                    # The circuit counts what a deployment did for a request (served it or not), not
                    # each try: a flaky upstream that answers on the second try is slow, not down.
                    if health.record(key, ok=False, latency_s=self._clock() - started):
                        await self._rest(key, self._cooldown_s, failing=True)
        except BaseException as exc:
            # (around the `finally` too: a cancellation while a circuit's rest is awaited, after
            # a try served, is the call's failure as well)
            if alone and decided is not None:
                decided.failed(exc)
            raise

    @staticmethod
    def _moved_on(observer: RequestObserver, made: int, tries: list[Attempt]) -> None:
        """A try after a failed one leaves: counted as it leaves (not before the waits that may
        stop it there, the request's deadline passing): a retry of the same model, or the
        first try of a later model (a fallback, once, whatever models could try nothing in
        between), by the provider of the last failed try."""
        if made > 1:
            observer.retried(tries[-1].provider)
        else:
            observer.fell_back(tries[-1].provider)

    async def _before_deadline(self, call: Awaitable[T], left_s: float) -> T:
        """`call` cut when the request's deadline passes, in `left_s`: 504, the deadline's."""
        loop = asyncio.get_running_loop()
        cuts = self._cuts
        if cuts is None or cuts.loop is not loop:
            cuts = self._cuts = TimerWheel(loop)
        task = asyncio.current_task()
        if task is None:  # (a request is served in a task: never)
            return await call
        cut = _Cut(task)
        slot = cuts.add(loop.time() + left_s, cut)
        try:
            return await call
        except asyncio.CancelledError as exc:
            if not cut.fired or task.uncancel() > cut.cancelling:
                raise  # (also cancelled by someone else: the client went away)
            raise self._deadline_exceeded() from exc
        finally:
            cut.done = True
            slot.discard(cut)

    def _deadline_exceeded(self) -> GatewayTimeout:
        return GatewayTimeout(
            f"No upstream answered within this request's deadline ({self._deadline_s or 0.0:g} s).",
            code=DEADLINE_EXCEEDED,
        )

    @staticmethod
    def _outcome(outcome: _ModelOutcome, alone: bool) -> _ModelOutcome:
        """What trying a model came to, when none of its deployments served: raised when it
        was the call's only model."""
        if alone:
            raise _final_error([outcome])
        return outcome

    @staticmethod
    def _waits(
        error: GatewayError,
        back_s: float,
        policy: RetrySettings,
        may_retry: Callable[[GatewayError], bool],
        left_s: float,
    ) -> bool:
        """Whether to back off and try the model's deployments again after `error`: not when
        the wait it must make (a Retry-After, a deployment's rest) would not end before the
        request's deadline (`left_s` from now)."""
        longest = max(back_s, error.retry_after_s or 0.0)
        return may_retry(error) and longest <= policy.max_retry_after_s and longest < left_s

    async def _rest(self, key: str, seconds: float, failing: bool) -> None:
        with contextlib.suppress(Exception):  # the capacity store logs its own failures
            await self.capacity.rest(key, seconds, failing)

    def broke_off(self, served: CatalogEntry) -> None:
        """A stream it served that the upstream broke off after its first byte (cut, nonsense,
        silence past the idle timeout): a failure of that call after all, for its circuit. A
        circuit this opens rests the deployment as one opened by a failed try does (on Redis:
        on every replica), in a task of its own (this runs in the stream's settlement)."""
        if self._health.broke_off(served.key):
            resting = asyncio.get_running_loop().create_task(
                self._rest(served.key, self._cooldown_s, failing=True)
            )
            self._resting.add(resting)
            resting.add_done_callback(self._resting.discard)

    def release(self, served: CatalogEntry, reserved_tokens: int, used_tokens: int) -> None:
        """The served request is over (answered, or its stream ended)."""
        self.balancer.finished(served.key)
        if served.provider.tokens_per_minute is not None:  # else no estimate was taken
            self.capacity.settle(served, reserved_tokens, used_tokens)

    def _end_span(self, record: RequestRecord | None, span: ClientSpan, error: str | None) -> None:
        if self.tracing is not None and record is not None:
            self.tracing.end_attempt(record, span, error)
