"""Retries with full jitter, Retry-After, fallbacks and circuit breakers, with an injected clock,
sleep and random source. No sockets."""

from __future__ import annotations

import asyncio
import random

import pytest

from gateway.admission_gate import GATE, AdmissionRefused
from gateway.errors import BadGateway, GatewayError, InvalidRequest, RateLimited, ServiceUnavailable
from gateway.routing.catalog import Catalog, CatalogEntry
from gateway.routing.health import Health
from gateway.routing.retry import Retrier, backoff_delay
from gateway.settings import RetrySettings, load_settings

CATALOG = Catalog(load_settings(None), {})
SONNET = CATALOG.entries["anthropic/claude-sonnet-4"]
TURBO = CATALOG.entries["openai/gpt-4-turbo"]
POLICY = RetrySettings(attempts=3, base_delay_s=0.25, max_delay_s=8.0, max_retry_after_s=30)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def retrier(clock: Clock, health: Health | None = None, seed: int = 7) -> Retrier:
    return Retrier(
        lambda _target: POLICY,
        health or Health(clock=clock),
        rng=random.Random(seed),
        sleep=clock.sleep,
        clock=clock,
    )


def script(*outcomes: GatewayError | str) -> tuple[list[str], object]:
    calls: list[str] = []
    queue = list(outcomes)

    async def attempt(target: CatalogEntry) -> str:
        calls.append(target.model.id)
        outcome = queue.pop(0)
        if isinstance(outcome, GatewayError):
            raise outcome
        return outcome

    return calls, attempt


def unavailable(retry_after: float | None = None) -> ServiceUnavailable:
    return ServiceUnavailable("503", retry_after_s=retry_after, retryable=True)


@pytest.mark.parametrize("retry", range(8))
def test_backoff_is_full_jitter_within_bounds(retry: int) -> None:
    rng = random.Random(retry)
    ceiling = min(POLICY.max_delay_s, POLICY.base_delay_s * 2**retry)
    delays = [backoff_delay(retry, POLICY, rng) for _ in range(200)]
    assert all(0 <= d <= ceiling for d in delays)
    assert max(delays) > ceiling * 0.8, "the whole range is used"


async def test_retryable_failures_are_retried_then_succeed() -> None:
    clock = Clock()
    calls, attempt = script(unavailable(), unavailable(), "ok")
    result, target, tries = await retrier(clock).call_targets([SONNET], attempt)  # type: ignore[arg-type]
    assert (result, target) == ("ok", SONNET.deployments[0])
    assert calls == [SONNET.model.id] * 3
    assert len(clock.slept) == 2
    assert 0 <= clock.slept[0] <= 0.25 and 0 <= clock.slept[1] <= 0.5
    assert [t.error for t in tries] == ["service_unavailable", "service_unavailable", None]


async def test_retry_after_is_honoured_when_under_the_cap() -> None:
    clock = Clock()
    _, attempt = script(unavailable(retry_after=4.0), "ok")
    await retrier(clock).call_targets([SONNET], attempt)  # type: ignore[arg-type]
    assert clock.slept == [4.0]


async def test_retry_after_over_the_cap_falls_back_at_once() -> None:
    clock = Clock()
    calls, attempt = script(
        RateLimited("429", retry_after_s=120, retryable=True), "from the fallback"
    )
    result, target, _ = await retrier(clock).call_targets([SONNET, TURBO], attempt)  # type: ignore[arg-type]
    assert (result, target) == ("from the fallback", TURBO.deployments[0])
    assert calls == [SONNET.model.id, TURBO.model.id]
    assert clock.slept == []


async def test_attempts_exhausted_then_next_target() -> None:
    clock = Clock()
    calls, attempt = script(unavailable(), unavailable(), unavailable(), "ok")
    _, target, _ = await retrier(clock).call_targets([SONNET, TURBO], attempt)  # type: ignore[arg-type]
    assert calls == [SONNET.model.id] * 3 + [TURBO.model.id]
    assert target == TURBO.deployments[0]


async def test_nonsense_answer_falls_back_without_retry() -> None:
    clock = Clock()
    calls, attempt = script(BadGateway("nonsense"), "ok")
    await retrier(clock).call_targets([SONNET, TURBO], attempt)  # type: ignore[arg-type]
    assert calls == [SONNET.model.id, TURBO.model.id]


async def test_client_errors_are_neither_retried_nor_fallen_back() -> None:
    clock = Clock()
    calls, attempt = script(InvalidRequest("bad"), "never")
    with pytest.raises(InvalidRequest):
        await retrier(clock).call_targets([SONNET, TURBO], attempt)  # type: ignore[arg-type]
    assert calls == [SONNET.model.id]


async def test_last_error_is_raised_when_everything_fails() -> None:
    clock = Clock()
    _, attempt = script(*[unavailable()] * 6)
    with pytest.raises(ServiceUnavailable):
        await retrier(clock).call_targets([SONNET, TURBO], attempt)  # type: ignore[arg-type]


async def test_may_retry_limits_retries_to_connect_errors_for_images() -> None:
    clock = Clock()
    calls, attempt = script(unavailable(), "never")
    with pytest.raises(ServiceUnavailable):
        await retrier(clock).call_targets(
            [SONNET],
            attempt,  # type: ignore[arg-type]
            may_retry=lambda exc: exc.connect_failed,
        )
    assert calls == [SONNET.model.id]


def test_circuit_opens_after_failures_and_probes_after_cool_down() -> None:
    clock = Clock()
    health = Health(window=10, min_failures=3, failure_rate=0.5, cool_down_s=30, clock=clock)
    model = SONNET.model.id
    for _ in range(3):
        assert health.allows(model)
        health.record(model, ok=False, latency_s=0.1)
    assert not health.allows(model)
    assert health.reopens_in(model) == 30
    clock.now += 30
    assert health.allows(model), "one probe after the cool-down"
    assert not health.allows(model), "and only one"
    health.record(model, ok=False, latency_s=0.1)
    assert not health.allows(model), "a failed probe opens it again"
    clock.now += 30
    assert health.allows(model)
    health.record(model, ok=True, latency_s=0.2)
    assert health.allows(model) and health.allows(model)
    assert health.view()[0].state == "closed"


def test_a_few_failures_among_many_successes_keep_it_closed() -> None:
    clock = Clock()
    health = Health(window=20, min_failures=5, failure_rate=0.5, clock=clock)
    for i in range(40):
        health.record("m", ok=i % 4 != 0, latency_s=0.1)
    assert health.allows("m")


async def test_open_circuit_is_skipped_in_favour_of_the_fallback() -> None:
    clock = Clock()
    health = Health(min_failures=1, failure_rate=0.1, clock=clock)
    health.record(SONNET.model.id, ok=False, latency_s=0.1)
    calls, attempt = script("ok")
    _, target, _ = await retrier(clock, health).call_targets([SONNET, TURBO], attempt)  # type: ignore[arg-type]
    assert calls == [TURBO.model.id] and target == TURBO.deployments[0]


async def test_all_circuits_open_is_503_with_retry_after() -> None:
    clock = Clock()
    health = Health(min_failures=1, failure_rate=0.1, cool_down_s=30, clock=clock)
    health.record(SONNET.model.id, ok=False, latency_s=0.1)
    _, attempt = script("never")
    with pytest.raises(ServiceUnavailable) as caught:
        await retrier(clock, health).call_targets([SONNET], attempt)  # type: ignore[arg-type]
    assert caught.value.retry_after_s == 30


class RefusingGate:
    """An admission still on its way that turns out refused (gateway/admission_gate.py)."""

    open = False

    def __init__(self) -> None:
        self.waited = 0

    async def passed(self) -> None:
        self.waited += 1
        raise AdmissionRefused


async def test_a_refused_admission_stops_the_retrier_before_it_records_or_falls_back() -> None:
    """A try that failed before it reached an upstream (a translation, missing credentials)
    while the admission was still on its way: for a refused request nothing is recorded on the
    circuit, nothing rests, nothing is slept and no fallback is tried."""
    clock = Clock()
    health = Health(clock=clock)
    calls, attempt = script(unavailable(retry_after=1.0), "ok")
    gate = RefusingGate()
    token = GATE.set(gate)
    try:
        with pytest.raises(AdmissionRefused):
            await retrier(clock, health).call_targets([SONNET, TURBO], attempt)  # type: ignore[arg-type]
    finally:
        GATE.reset(token)
    assert calls == [SONNET.model.id]
    assert gate.waited == 1
    assert clock.slept == []
    assert health.all_closed and all(c.calls == 0 for c in health.view())


async def test_a_half_open_circuit_s_probe_is_claimed_only_for_an_admitted_request() -> None:
    clock = Clock()
    health = Health(min_failures=1, window=2, cool_down_s=30, clock=clock)
    key = SONNET.deployments[0].key
    health.record(key, ok=False, latency_s=0.1)
    clock.now += 31  # half-open: one probe may go
    calls, attempt = script("ok")
    token = GATE.set(RefusingGate())
    try:
        with pytest.raises(AdmissionRefused):
            await retrier(clock, health).call_targets([SONNET], attempt)  # type: ignore[arg-type]
    finally:
        GATE.reset(token)
    assert calls == []
    assert health.can_serve(key), "the probe is still free for the next request"


@pytest.mark.parametrize(
    "ended", [InvalidRequest("context too long"), asyncio.CancelledError()], ids=["400", "cancel"]
)
async def test_a_probe_that_ends_without_an_outcome_frees_the_half_open_circuit(
    ended: BaseException,
) -> None:
    """The probe's request got a client error from the upstream (not the deployment's failure)
    or its client went away: nothing says whether the deployment is back, so the next request
    probes. Before, the probe stayed claimed and the model answered 503 (circuit open) until
    the process restarted."""
    clock = Clock()
    health = Health(min_failures=1, window=2, cool_down_s=30, clock=clock)
    key = SONNET.deployments[0].key
    health.record(key, ok=False, latency_s=0.1)
    clock.now += 31  # half-open: one probe may go

    async def attempt(target: CatalogEntry) -> str:
        raise ended

    with pytest.raises(type(ended)):
        await retrier(clock, health).call_targets([SONNET], attempt)
    assert health.can_serve(key), "the probe is free for the next request"
    _, served = script("ok")
    result, _, _ = await retrier(clock, health).call_targets([SONNET], served)  # type: ignore[arg-type]
    assert result == "ok" and health.view()[0].state == "closed"


def test_a_stream_broken_off_after_it_started_counts_as_that_calls_failure() -> None:
    clock = Clock()
    health = Health(window=10, min_failures=3, failure_rate=0.5, cool_down_s=30, clock=clock)
    model = SONNET.model.id
    for _ in range(4):  # four streams start (served), then the upstream breaks each off
        assert health.allows(model)
        health.record(model, ok=True, latency_s=0.1)
    assert not health.broke_off(model) and not health.broke_off(model)
    assert health.view()[0].error_rate == 0.5
    assert health.broke_off(model), "the third failure of four opens it"
    assert not health.allows(model)
    assert not health.broke_off(model), "an open circuit is left as it is"
    assert not Health(clock=clock).broke_off("never-called")


async def test_broke_off_rests_the_deployment_once_its_circuit_opens() -> None:
    clock = Clock()
    health = Health(window=4, min_failures=2, failure_rate=0.5, clock=clock)
    retrier = Retrier(lambda _target: POLICY, health, sleep=clock.sleep, clock=clock)
    rests: list[tuple[str, float, bool]] = []

    async def rest(key: str, seconds: float, failing: bool = False) -> None:
        rests.append((key, seconds, failing))

    retrier.capacity.rest = rest  # type: ignore[method-assign]
    served = SONNET.deployments[0]
    for _ in range(2):
        health.record(served.key, ok=True, latency_s=0.1)
    retrier.broke_off(served)
    assert rests == []
    retrier.broke_off(served)
    await asyncio.sleep(0)  # the rest's task
    assert rests == [(served.key, 30.0, True)]
