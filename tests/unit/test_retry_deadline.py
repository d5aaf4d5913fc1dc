"""A request's deadline across retries and fallbacks (`[retry] deadline_s`), with an injected
clock, sleep and random source. A try that the deadline cuts is cut on the loop's clock (the
fake clock stands still meanwhile), so the deadlines here are a few tens of ms. No sockets."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.trace import SpanKind

from gateway.app import create_app
from gateway.drain import DRAIN, OpenStreams
from gateway.errors import (
    DEADLINE_EXCEEDED,
    BadGateway,
    DeadlineCut,
    GatewayTimeout,
    ServiceUnavailable,
)
from gateway.metering import SettleOnFailure
from gateway.metrics import Metrics
from gateway.observer import RequestObserver
from gateway.providers.base import UpstreamRequest
from gateway.providers.openai import OpenAIProvider
from gateway.requestlog import RequestLog, RequestRecord, current_request
from gateway.routing.capacity import MemoryCapacity, Taken
from gateway.routing.catalog import CatalogEntry, Secret
from gateway.routing.health import Health
from gateway.routing.retry import Retrier, backoff_delay
from gateway.settings import (
    ConfigError,
    ProviderSettings,
    RetrySettings,
    TelemetrySettings,
    deadline_outlasted,
    load_settings,
)
from gateway.timer_wheel import Due, Slot
from gateway.tracing.otel import Tracing
from tests.live_bound import within
from tests.scrape import parse, total
from tests.unit.test_retry_and_health import SONNET, TURBO, Clock, script, unavailable
from tests.unit.test_span_pipe import Kept


def policy(**fields: Any) -> RetrySettings:
    """A provider's retry policy: it carries no deadline (the retrier is given the request's)."""
    base: dict[str, Any] = {"attempts": 3, "base_delay_s": 0.25, "max_delay_s": 8.0}
    return RetrySettings(max_retry_after_s=30, **base | fields)


def retrier(
    clock: Clock,
    deadline_s: float | None,
    health: Health | None = None,
    retry: RetrySettings | None = None,
) -> Retrier:
    chosen = retry or policy()
    return Retrier(
        lambda _target: chosen,
        health or Health(clock=clock),
        rng=random.Random(7),
        sleep=clock.sleep,
        clock=clock,
        deadline_s=deadline_s,
    )


async def hang(target: CatalogEntry) -> str:
    """An upstream that never answers (its own first-byte bound is far off)."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def test_a_deadline_shorter_than_a_try_cuts_it_with_504_and_tries_nothing_after() -> None:
    clock = Clock()
    calls: list[str] = []

    async def attempt(target: CatalogEntry) -> str:
        calls.append(target.model.id)
        return await hang(target)

    with pytest.raises(GatewayTimeout) as raised:
        await retrier(clock, 0.05).call_targets([SONNET, TURBO], attempt)
    assert raised.value.status == 504 and raised.value.code == "deadline_exceeded"
    assert calls == [SONNET.model.id], "no retry and no fallback once the deadline passed"


async def test_a_fallback_s_try_is_bounded_by_the_time_left() -> None:
    clock = Clock()

    async def attempt(target: CatalogEntry) -> str:
        if target.model.id == SONNET.model.id:
            clock.now += 9.95  # the first model took 9.95 s of the 10 to fail
            raise BadGateway("nonsense")
        return await hang(target)

    call = retrier(clock, 10).call_targets([SONNET, TURBO], attempt)
    # (the guard only ends the test if the fallback were not cut; 0.05 s is what it has left)
    with pytest.raises(GatewayTimeout) as raised:
        await within(call, 30)
    assert raised.value.code == "deadline_exceeded"


async def test_a_retry_after_longer_than_the_time_left_is_not_waited_for() -> None:
    clock = Clock()
    calls, attempt = script(unavailable(retry_after=6.0), "from the fallback")
    result, target, _ = await retrier(clock, 5).call_targets([SONNET, TURBO], attempt)  # type: ignore[arg-type]
    assert (result, target) == ("from the fallback", TURBO.deployments[0])
    assert calls == [SONNET.model.id, TURBO.model.id] and clock.slept == []

    # alone, the call ends at once with the upstream's own answer (not a 504: no try was cut)
    _, attempt = script(unavailable(retry_after=6.0))
    with pytest.raises(ServiceUnavailable) as raised:
        await retrier(clock, 5).call_targets([SONNET], attempt)  # type: ignore[arg-type]
    assert raised.value.retry_after_s == 6.0 and clock.slept == []

    # with time enough left it is waited for, as without a deadline
    _, attempt = script(unavailable(retry_after=6.0), "ok")
    await retrier(clock, 10).call_targets([SONNET], attempt)  # type: ignore[arg-type]
    assert clock.slept == [6.0]


async def test_backoff_is_capped_by_the_time_left() -> None:
    retry = policy(attempts=5, base_delay_s=8.0, max_delay_s=8.0)
    assert backoff_delay(0, retry, random.Random(7)) > 1.0, "uncapped, the first would overrun"
    clock = Clock()
    deadline = clock.now + 1.0
    lefts: list[float] = []  # the time left as each backoff starts
    sleep = clock.sleep

    async def sleep_noting(seconds: float) -> None:
        lefts.append(deadline - clock.now)
        await sleep(seconds)

    clock.sleep = sleep_noting  # type: ignore[method-assign]
    tried = 0

    async def attempt(target: CatalogEntry) -> str:
        nonlocal tried
        tried += 1
        clock.now += 0.1  # each try takes 0.1 s to fail
        raise unavailable()

    with pytest.raises(ServiceUnavailable):  # the last failure's own error: no try was cut
        await retrier(clock, 1.0, retry=retry).call_targets([SONNET], attempt)
    assert lefts and all(0 <= s <= left for s, left in zip(clock.slept, lefts, strict=True))
    assert clock.now <= deadline + 0.1, "no backoff ended past the deadline"


@pytest.mark.parametrize(("deadline_s", "reads"), [(None, 2), (30.0, 4)], ids=["unset", "set"])
async def test_unset_reads_no_clock_and_set_two_more(deadline_s: float | None, reads: int) -> None:
    """The hot path without a deadline is the one before it: two clock reads for a served try
    (its start, its latency); with one, two more (the call's deadline, the time left as the
    try leaves)."""
    clock = Clock()
    read = 0

    def counting() -> float:
        nonlocal read
        read += 1
        return clock.now

    retry = policy()
    retrier_ = Retrier(
        lambda _t: retry,
        Health(clock=clock),
        sleep=clock.sleep,
        clock=counting,
        deadline_s=deadline_s,
    )
    _, attempt = script("ok")
    await retrier_.call_targets([SONNET], attempt)  # type: ignore[arg-type]
    assert read == reads


async def test_a_deadline_cut_never_counts_against_its_deployment() -> None:
    """The request's deadline ran out, not the deployment: a cut (the request's first try, with
    the whole deadline, as a fallback's with what was left) is no failure of its deployment,
    so a deadline shorter than a healthy model's answer opens no circuit."""
    clock = Clock()
    health = Health(window=2, min_failures=1, failure_rate=0.5, clock=clock)
    with pytest.raises(GatewayTimeout):
        await retrier(clock, 0.05, health).call_targets([SONNET], hang)
    assert health.can_serve(SONNET.deployments[0].key), "a first try's cut opens no circuit"

    clock = Clock()
    health = Health(window=2, min_failures=1, failure_rate=0.5, clock=clock)

    async def attempt(target: CatalogEntry) -> str:
        if target.model.id == SONNET.model.id:
            clock.now += 9.95
            raise BadGateway("nonsense")
        return await hang(target)

    with pytest.raises(GatewayTimeout):
        await retrier(clock, 10, health).call_targets([SONNET, TURBO], attempt)
    assert not health.can_serve(SONNET.deployments[0].key), "its own failure counts"
    assert health.can_serve(TURBO.deployments[0].key), "the cut fallback is not counted"


async def test_an_upstream_s_own_timeout_still_counts_under_a_deadline() -> None:
    """The provider's own bound (`first_byte_timeout_s`: a retryable 504 without the
    deadline's code) firing before the deadline is the upstream's failure, as without one."""
    clock = Clock()
    health = Health(window=2, min_failures=1, failure_rate=0.5, clock=clock)
    _, attempt = script(GatewayTimeout("The upstream provider 'up' timed out.", retryable=True))
    retry = policy(attempts=1)
    with pytest.raises(GatewayTimeout) as raised:
        await retrier(clock, 30, health, retry).call_targets([SONNET], attempt)  # type: ignore[arg-type]
    assert raised.value.code != DEADLINE_EXCEEDED
    assert not health.can_serve(SONNET.deployments[0].key), "one failure in the window opens it"


def test_deadline_s_is_the_request_s_not_a_provider_s(tmp_path: Path) -> None:
    path = tmp_path / "klawd.toml"
    path.write_text("[retry]\ndeadline_s = 20\n[providers.openai.retry]\nattempts = 5\n")
    settings = load_settings(path)
    assert settings.retry.deadline_s == 20
    # a provider's own policy does not carry it: the retrier is given it (gateway/state.py)
    assert settings.provider_retry("openai").deadline_s is None
    assert settings.provider_retry("openai").attempts == 5
    assert load_settings(None).retry.deadline_s is None

    path.write_text("[providers.openai.retry]\ndeadline_s = 20\n")
    with pytest.raises(ConfigError, match=r"providers\.openai\.retry\.deadline_s"):
        load_settings(path)
    path.write_text("[retry]\ndeadline_s = 0\n")
    with pytest.raises(ConfigError, match="deadline_s"):
        load_settings(path)
    with pytest.raises(ValueError, match="deadline_s"):
        Retrier(lambda _t: policy(), Health(), deadline_s=0.0)


def test_a_deadline_that_outlasts_no_provider_s_own_bound_is_said_at_start_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A deadline not above a provider's own bound on an answer's headers cuts that provider's
    calls first, and a cut never counts against a circuit: a hung deployment of it would stay
    in rotation. The app says which providers, once, when it is made."""
    path = tmp_path / "klawd.toml"
    path.write_text(
        "[retry]\ndeadline_s = 20\n"
        "[providers.openai]\nfirst_byte_timeout_s = 10\n"  # below it: its own timeouts count
        "[providers.anthropic]\nfirst_byte_timeout_s = 10\nanswer_timeout_s = 25\n"
    )
    settings = load_settings(path)
    outlasted = deadline_outlasted(settings)
    assert "openai" not in outlasted
    assert outlasted["anthropic"] == 25  # its non-streamed answers outlast the deadline
    assert outlasted["google"] == 60  # the built-in first-byte bound
    with caplog.at_level(logging.WARNING, logger="klawd"):
        create_app(settings, environ={})
    said = [r.getMessage() for r in caplog.records if "deadline_s" in r.getMessage()]
    assert len(said) == 1 and "anthropic (25 s), google (60 s)" in said[0]
    assert "openai (" not in said[0]
    assert "klawd (" not in said[0]  # served in process (echo): no upstream to hang

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="klawd"):
        create_app(load_settings(None), environ={})  # no deadline: nothing to say
    assert not [r for r in caplog.records if "deadline_s" in r.getMessage()]


async def test_a_client_gone_during_a_try_is_a_cancellation_not_the_deadline() -> None:
    call = asyncio.ensure_future(retrier(Clock(), 30).call_targets([SONNET], hang))
    await asyncio.sleep(0.01)  # the try is under way
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


class SlowTake(MemoryCapacity):
    """A shared store's capacity take (never answered locally) that takes `seconds` of the
    fake clock for the deployments of `slow_model` (any model when None)."""

    def __init__(self, clock: Clock, seconds: float, slow_model: str | None = None) -> None:
        super().__init__(clock)
        self.clock = clock
        self.seconds = seconds
        self.slow_model = slow_model

    def take_local(self, ordered: Sequence[CatalogEntry], tokens: int) -> Taken | None:  # type: ignore[override]
        return None

    async def take(self, ordered: Sequence[CatalogEntry], tokens: int) -> Taken:
        if ordered and (self.slow_model is None or ordered[0].model.id == self.slow_model):
            self.clock.now += self.seconds
        return self.take_now(ordered, tokens)


async def test_a_try_is_not_sent_once_the_deadline_passed_before_it_leaves() -> None:
    """The deadline passes in the gateway's own wait before the first try (the shared store's
    take): the upstream is not asked (sent, it would be cut at once, maybe billed), the
    request ends with the deadline's 504, and nothing is held or counted against the
    deployment."""
    clock = Clock()
    health = Health(window=2, min_failures=1, failure_rate=0.5, clock=clock)
    calls, attempt = script("never sent")
    retrier_ = retrier(clock, 1.0, health)
    retrier_.capacity = SlowTake(clock, 2.0)
    with pytest.raises(GatewayTimeout) as raised:
        await retrier_.call_targets([SONNET, TURBO], attempt)  # type: ignore[arg-type]
    assert raised.value.code == "deadline_exceeded"
    assert calls == [], "no upstream request once the deadline passed"
    deployment = SONNET.deployments[0].key
    assert health.can_serve(deployment), "a try never sent says nothing of its deployment"
    assert retrier_.balancer.in_flight(deployment) == 0


async def test_a_fallback_not_sent_once_the_deadline_passed_leaves_the_last_failure() -> None:
    """As when the deadline passes between tries: the last failure stands (a 503 keeps its
    Retry-After), and the fallback is not asked."""
    clock = Clock()
    calls, attempt = script(unavailable(retry_after=60.0), "never sent")
    retrier_ = retrier(clock, 1.0)
    retrier_.capacity = SlowTake(clock, 2.0, slow_model=TURBO.model.id)
    with pytest.raises(ServiceUnavailable) as raised:
        await retrier_.call_targets([SONNET, TURBO], attempt)  # type: ignore[arg-type]
    assert raised.value.retry_after_s == 60.0
    assert calls == [SONNET.model.id]
    assert retrier_.balancer.in_flight(TURBO.deployments[0].key) == 0


class HangingClient:
    """A providers' HTTP client whose requests never get their headers."""

    async def request(self, *args: object) -> object:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class Noted:
    """An observer that notes the upstream calls reported to it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def upstream_finished(self, provider: str, duration_s: float, error_type: str | None) -> None:
        self.calls.append((provider, error_type))


def hanging_provider() -> tuple[OpenAIProvider, Noted, UpstreamRequest]:
    settings = ProviderSettings(kind="openai", base_url="http://upstream.invalid")
    provider = OpenAIProvider("up", settings, Secret("k"))
    provider._client = HangingClient()  # type: ignore[assignment]
    noted = Noted()
    provider.observer = noted  # type: ignore[assignment]
    upstream = UpstreamRequest("http://upstream.invalid/v1/chat/completions", {}, b"{}")
    return provider, noted, upstream


@pytest.mark.parametrize(
    ("messages", "reported"),
    [
        ((DeadlineCut(0),), [("up", "gateway_timeout")]),
        ((None,), []),
        ((DeadlineCut(0), None), []),
        ((DEADLINE_EXCEEDED,), []),
    ],
    ids=["deadline", "client-gone", "client-gone-after-the-cut", "the-cut-s-text-alone"],
)
async def test_an_upstream_call_cut_by_the_deadline_is_reported_a_client_gone_is_not(
    messages: tuple[str | None, ...], reported: list[tuple[str, str | None]]
) -> None:
    """The deadline's cut names its cancellation (`_Cut._cut`: a `DeadlineCut`); `_send`
    reports a call ended by it as the 504 it becomes, and nothing for any other cancellation,
    also one asked after the cut's before the call resumed (the error it gets still bears the
    cut's name), or one that only has its text."""
    provider, noted, upstream = hanging_provider()
    call = asyncio.ensure_future(provider._send(upstream))
    await asyncio.sleep(0)  # the call is under way
    for message in messages:
        call.cancel(message)
    with pytest.raises(asyncio.CancelledError):
        await call
    assert noted.calls == reported


class DrivenWheel:
    """The retrier's timer wheel for its cuts, due when the test says (`run`): the deadline
    passes in a loop turn of the test's choosing, not on a clock."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.slots: list[Slot] = []

    def add(self, when: float, entry: Due) -> Slot:
        slot = Slot(when)
        slot.add(entry)
        self.slots.append(slot)
        return slot

    def run(self) -> None:
        """What the wheel's loop timer does once the deadline's slot has passed."""
        for slot in self.slots:
            while slot:
                slot.pop().on_due()


async def test_an_answer_in_hand_when_the_deadline_passes_is_served() -> None:
    """The answer arrives and the deadline passes in the same loop turn, before the try's task
    has resumed to take it: the answer is served (it is in hand, and billed upstream), not
    thrown away for a 504."""
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[str] = loop.create_future()

    async def attempt(target: CatalogEntry) -> str:
        return await answered

    retrier_ = retrier(Clock(), 30)
    wheel = retrier_._cuts = DrivenWheel(loop)  # type: ignore[assignment]
    call = asyncio.ensure_future(retrier_.call_targets([SONNET], attempt))
    await asyncio.sleep(0)  # the try waits for its answer
    answered.set_result("the answer")  # its bytes read: the try's task is woken ...
    wheel.run()  # ... and the deadline passes in the same turn
    result, _, _ = await call
    assert result == "the answer"


async def test_a_try_still_waiting_when_the_deadline_passes_is_cut() -> None:
    """The other side of the test above: a try waiting for its answer, or for more of it once
    an earlier part was taken, is cut with the deadline's 504."""
    loop = asyncio.get_running_loop()
    head: asyncio.Future[None] = loop.create_future()

    async def attempt(target: CatalogEntry) -> str:
        await head  # the answer's headers ...
        return await hang(target)  # ... then its body, which never comes

    retrier_ = retrier(Clock(), 30)
    wheel = retrier_._cuts = DrivenWheel(loop)  # type: ignore[assignment]
    call = asyncio.ensure_future(retrier_.call_targets([SONNET], attempt))
    await asyncio.sleep(0)
    head.set_result(None)
    wheel.run()  # due with the headers in hand: the try goes on to wait for the body ...
    with pytest.raises(GatewayTimeout) as raised:
        await call  # ... where it is cut
    assert raised.value.code == DEADLINE_EXCEEDED


def metered(retrier_: Retrier) -> Metrics:
    """The retrier's retry and fallback counters on a metrics registry of their own."""
    metrics = Metrics([TURBO.model.id], ["openai", "anthropic"], ["free"], "sqlite")
    retrier_.observer = RequestObserver(metrics, RequestLog(io.StringIO()))
    return metrics


def counted(metrics: Metrics, name: str) -> float:
    """`name`'s total as /metrics gives it (the buffered updates flushed first)."""
    return total(parse(metrics.exposition().decode()), name)


class SlowRetryTake(SlowTake):
    """A shared store's take that is slow (`seconds` of the fake clock) for every try but the
    first (a take with deployments to take from)."""

    def __init__(self, clock: Clock, seconds: float) -> None:
        super().__init__(clock, seconds)
        self.takes = 0

    async def take(self, ordered: Sequence[CatalogEntry], tokens: int) -> Taken:
        self.takes += bool(ordered)
        if ordered and self.takes > 1:
            self.clock.now += self.seconds
        return self.take_now(ordered, tokens)


async def test_a_retry_not_sent_once_the_deadline_passed_is_not_counted() -> None:
    """The deadline passes in the retry's own wait (the shared store's take): the retry never
    leaves, so `klawd_upstream_retries_total` does not count it; one that leaves is counted."""
    clock = Clock()
    calls, attempt = script(unavailable(), "never sent")
    retrier_ = retrier(clock, 1.0)
    retrier_.capacity = SlowRetryTake(clock, 2.0)
    metrics = metered(retrier_)
    with pytest.raises(ServiceUnavailable):  # the first try's own failure stands
        await retrier_.call_targets([TURBO], attempt)  # type: ignore[arg-type]
    assert calls == [TURBO.model.id]
    assert counted(metrics, "klawd_upstream_retries_total") == 0

    calls, attempt = script(unavailable(), "served")
    retrier_.capacity = SlowRetryTake(clock, 0.0)
    await retrier_.call_targets([TURBO], attempt)  # type: ignore[arg-type]
    assert calls == [TURBO.model.id] * 2
    assert counted(metrics, "klawd_upstream_retries_total") == 1


async def test_a_try_never_sent_has_no_client_span() -> None:
    """A client span per upstream attempt (DESIGN's Traces, decision 0019): a retry that the
    deadline stopped before it left (the shared store's take outlasted it) was no attempt, so
    no span; the try that was sent before it has its span, with its failure."""
    tracing = Tracing(TelemetrySettings(otlp_endpoint="http://127.0.0.1:9", sample_ratio=1.0))
    tracing.pipe.shutdown()  # its rows are read here (test_span_pipe.py's `traced`)
    kept = Kept(tracing)
    record = RequestRecord("req_unsent", "POST")
    tracing.start_request(record, "/v1/chat/completions", [])
    clock = Clock()
    calls, attempt = script(unavailable(), "never sent")
    retrier_ = retrier(clock, 1.0)
    retrier_.capacity = SlowRetryTake(clock, 2.0)
    retrier_.tracing = tracing
    token = current_request.set(record)
    try:
        with pytest.raises(ServiceUnavailable):
            await retrier_.call_targets([TURBO], attempt)  # type: ignore[arg-type]
    finally:
        current_request.reset(token)
    assert calls == [TURBO.model.id]
    clients = [row for row in kept.read() if row[0] == SpanKind.CLIENT.value]
    assert [(row[-2], row[-1]) for row in clients] == [(0, "service_unavailable")]
    assert record.upstream_span is None, "the unsent try's span is not what goes upstream next"


async def test_a_fallback_not_sent_once_the_deadline_passed_is_not_counted() -> None:
    """As a retry: `klawd_fallbacks_total` counts a request moved on to its next model when
    that model's try leaves, not when the deadline stopped it in its own wait before."""
    clock = Clock()
    calls, attempt = script(unavailable(retry_after=60.0), "never sent")
    retrier_ = retrier(clock, 1.0)
    retrier_.capacity = SlowTake(clock, 2.0, slow_model=TURBO.model.id)
    metrics = metered(retrier_)
    with pytest.raises(ServiceUnavailable):  # the first model's failure stands
        await retrier_.call_targets([SONNET, TURBO], attempt)  # type: ignore[arg-type]
    assert calls == [SONNET.model.id]
    assert counted(metrics, "klawd_fallbacks_total") == 0

    calls, attempt = script(unavailable(retry_after=60.0), "served")
    retrier_.capacity = SlowTake(clock, 0.0)
    await retrier_.call_targets([SONNET, TURBO], attempt)  # type: ignore[arg-type]
    assert calls == [SONNET.model.id, TURBO.model.id]
    assert counted(metrics, "klawd_fallbacks_total") == 1


CUT_ALONE = (GatewayTimeout, [("up", "gateway_timeout")])
CLIENT_GONE = (asyncio.CancelledError, [])


@pytest.mark.parametrize("before", [0, 1], ids=["nothing-before", "a-cancel-left-before"])
@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("deadline", CUT_ALONE),
        ("deadline, client", CLIENT_GONE),
        ("client, deadline", CLIENT_GONE),
    ],
)
async def test_the_retrier_and_the_cut_call_agree_whatever_was_cancelled_before_the_try(
    before: int, order: str, expected: tuple[type[BaseException], list[tuple[str, str | None]]]
) -> None:
    """The request's task may carry a cancellation asked before its try and never taken back
    (a host's layer that swallowed it): the retrier reads the cut against the count at the
    try's start, and so must the cut upstream call. The deadline alone: 504, and the call
    counted as its 504. The client's cancel in the cut's turn, before or after it: a client
    gone, and the call not counted. (Before, the call compared with 0: a cancel left from
    before hid the cut, the retrier's 504 had no upstream failure.)"""
    loop = asyncio.get_running_loop()
    provider, noted, upstream = hanging_provider()
    retrier_ = retrier(Clock(), 30)
    wheel = retrier_._cuts = DrivenWheel(loop)  # type: ignore[assignment]

    async def request() -> object:
        task = asyncio.current_task()
        assert task is not None
        for _ in range(before):  # cancelled, and the cancel swallowed (not uncancelled)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(1)
        assert task.cancelling() == before
        return await retrier_.call_targets([SONNET], lambda _target: provider._send(upstream))

    call = asyncio.ensure_future(request())
    while not wheel.slots:  # the try is under way, its cut armed
        await asyncio.sleep(0)
    for step in order.split(", "):
        if step == "deadline":
            wheel.run()  # the cut is queued for the loop's next turn ...
        else:
            loop.call_soon(call.cancel)  # ... and the client leaves in that turn
    ended, reported = expected
    with pytest.raises(ended):
        await call
    assert noted.calls == reported


class Settled:
    """A Meter as `SettleOnFailure` sees it: the statuses settled, and the worker's streams."""

    def __init__(self, streams: OpenStreams) -> None:
        self.streams = streams
        self.statuses: list[int] = []

    def settle(self, _ticket: object, _served: object, _usage: object, *rest: Any) -> int:
        self.statuses.append(rest[1])
        return 0


@pytest.mark.parametrize(
    ("order", "status", "message"),
    [
        ("drain", 503, DRAIN),
        ("deadline, drain", 503, "the cut's"),
        ("drain, deadline", 503, DRAIN),
        ("deadline, client", 499, "the cut's"),
    ],
)
async def test_a_try_the_drain_cancels_in_the_deadline_s_turn_settles_as_the_drain(
    order: str, status: int, message: str
) -> None:
    """A try inside a stream the drain ends (no route runs one there today: each opens its
    upstream stream through the retrier before the stream is registered; this orders the cancels
    by hand). The drain's cancel in the deadline's cut's loop turn, after the cut: the task gets
    the cut's message (the first of two cancels of a task waiting on a future), the retrier
    re-raises it (another cancel came), and the drain told by its message alone settled 499, a
    client gone, where the drain settles 503. The open streams know the tasks they ended."""
    loop = asyncio.get_running_loop()
    provider, noted, upstream = hanging_provider()
    retrier_ = retrier(Clock(), 30)
    wheel = retrier_._cuts = DrivenWheel(loop)  # type: ignore[assignment]
    streams = OpenStreams()
    meter = Settled(streams)
    seen: list[asyncio.CancelledError] = []

    async def stream() -> object:
        task = asyncio.current_task()
        assert task is not None
        streams.add(task)  # registered as `send_event_stream` registers an open stream's task
        with SettleOnFailure(meter, None, True):  # type: ignore[arg-type]
            try:
                return await retrier_.call_targets(
                    [SONNET], lambda _target: provider._send(upstream)
                )
            except asyncio.CancelledError as exc:
                seen.append(exc)
                raise

    call = asyncio.ensure_future(stream())
    while not wheel.slots:  # the try is under way, its cut armed
        await asyncio.sleep(0)
    for step in order.split(", "):
        if step == "deadline":
            wheel.run()  # the cut is queued for the loop's next turn ...
        elif step == "drain":
            loop.call_soon(streams.end_all)  # ... and the drain ends the open streams in it
        else:
            loop.call_soon(call.cancel)
    with pytest.raises(asyncio.CancelledError):
        await call
    assert (seen[0].args[0] == DRAIN) == (message == DRAIN), seen[0].args
    assert meter.statuses == [status]
    assert noted.calls == []  # the call counted as no upstream failure
