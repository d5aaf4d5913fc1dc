"""`Retrier.call_targets` handed a decided admission (gateway/routing/retry.py, `decided`; issue
19zzzzzm): served, the admission's ticket comes back in place of the tries; failed, refused by
the upstream, or cancelled, however the call ends, the admission is told once, before the error
goes on. Injected clock and sleep; no sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.errors import BadGateway, InvalidRequest
from gateway.routing.capacity import MemoryCapacity
from gateway.routing.catalog import Catalog, CatalogEntry
from gateway.routing.health import Health
from gateway.routing.retry import Retrier
from gateway.settings import load_settings
from tests.unit.test_retry_and_health import (
    POLICY,
    SONNET,
    TURBO,
    Clock,
    retrier,
    script,
    unavailable,
)

TWO_DEPLOYMENTS = """
[providers.east]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
[providers.west]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"

[[models]]
id = "team/gpt"
deployments = [
  { provider = "east", upstream_model = "gpt-e" },
  { provider = "west", upstream_model = "gpt-w", priority = 1 },
]
"""


class Decided:
    """A decided admission as the retrier sees it: its ticket, and the failures it was told."""

    def __init__(self) -> None:
        self.admitted = "the ticket"
        self.failures: list[BaseException] = []

    def failed(self, exc: BaseException) -> None:
        self.failures.append(exc)


@pytest.mark.parametrize("targets", [[SONNET], [SONNET, TURBO]], ids=["alone", "in-turn"])
async def test_a_served_call_returns_the_ticket_and_tells_no_failure(
    targets: list[CatalogEntry],
) -> None:
    _, attempt = script(unavailable(), "ok")
    decided = Decided()
    result, served, ticket = await retrier(Clock()).call_targets(
        targets,
        attempt,  # type: ignore[arg-type]
        lambda exc: exc.retryable,
        lambda exc: True,
        0,
        decided,
    )
    assert (result, served, ticket) == ("ok", SONNET.deployments[0], "the ticket")
    assert decided.failures == []


@pytest.mark.parametrize(
    ("targets", "outcomes"),
    [
        ([SONNET], [unavailable()] * 3),
        ([SONNET, TURBO], [unavailable()] * 6),
        ([SONNET, TURBO], [InvalidRequest("400")]),  # a client error ends the call at once
    ],
    ids=["alone", "in-turn", "client-error"],
)
async def test_a_failed_call_tells_its_admission_once_with_the_error_raised(
    targets: list[CatalogEntry], outcomes: list[Exception]
) -> None:
    _, attempt = script(*outcomes)  # type: ignore[arg-type]
    decided = Decided()
    call = retrier(Clock()).call_targets(
        targets,
        attempt,  # type: ignore[arg-type]
        lambda exc: exc.retryable,
        lambda exc: True,
        0,
        decided,
    )
    with pytest.raises(Exception) as raised:
        await call
    assert decided.failures == [raised.value]


@pytest.mark.parametrize("targets", [[SONNET], [SONNET, TURBO]], ids=["alone", "in-turn"])
async def test_a_cancelled_call_tells_its_admission_once(targets: list[CatalogEntry]) -> None:
    trying = asyncio.Event()

    async def hang(_target: CatalogEntry) -> str:
        trying.set()
        await asyncio.Event().wait()
        return "never"

    decided = Decided()
    call = asyncio.ensure_future(
        retrier(Clock()).call_targets(
            targets, hang, lambda exc: exc.retryable, lambda exc: True, 0, decided
        )
    )
    await trying.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert len(decided.failures) == 1
    assert isinstance(decided.failures[0], asyncio.CancelledError)


class HeldRest(MemoryCapacity):
    """A shared store's rest that takes its time: the circuit a failure opened rests there."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.resting = asyncio.Event()

    async def rest(self, key: str, seconds: float, failing: bool = False) -> None:
        self.resting.set()
        await asyncio.Event().wait()


async def test_a_call_cancelled_after_serving_while_a_circuit_rests_tells_its_admission(
    tmp_path: Path,
) -> None:
    """A try served after a sibling deployment failed and opened its circuit; the call is
    cancelled while that circuit's rest is recorded (the retrier's last wait): the call ends
    with the cancellation, not the answer, and the admission is told (else what it reserved
    would stay reserved)."""
    path = tmp_path / "klawd.toml"
    path.write_text(TWO_DEPLOYMENTS)
    target = Catalog(load_settings(path), {}).entries["team/gpt"]
    clock = Clock()
    capacity = HeldRest(clock)
    one_failure_opens = Health(min_failures=1, failure_rate=0.0, clock=clock)
    retrier_ = Retrier(
        lambda _target: POLICY, one_failure_opens, sleep=clock.sleep, clock=clock,
        capacity=capacity,
    )  # fmt: skip
    calls, attempt = script(BadGateway("nonsense"), "ok")
    decided = Decided()
    call = asyncio.ensure_future(
        retrier_.call_targets(
            [target],
            attempt,  # type: ignore[arg-type]
            lambda exc: exc.retryable,
            lambda exc: True,
            0,
            decided,
        )
    )
    await capacity.resting.wait()
    assert len(calls) == 2, "the first deployment failed, the second served"
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert len(decided.failures) == 1
    assert isinstance(decided.failures[0], asyncio.CancelledError)
