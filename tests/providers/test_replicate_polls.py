"""A Replicate prediction's polls, against the fake predictions API and the real HTTP client: a
transient poll failure is polled again (a poll is a GET: idempotent) instead of losing the
image, within the prediction's deadline, after the failure's Retry-After, counted; and no poll
outlasts that deadline."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import uvloop

from gateway.errors import GatewayTimeout, RateLimited, ServiceUnavailable
from gateway.metrics import Metrics
from gateway.providers import replicate
from gateway.providers.base import HttpProvider
from gateway.providers.http_client import HttpClient
from gateway.providers.replicate import ReplicateProvider
from gateway.routing.catalog import Secret
from gateway.settings import ProviderSettings, RetrySettings, load_settings
from tests.conftest import free_port, gateway_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.provider_config import REPLICATE_TOKEN
from tests.fakes.replicate_upstream import FakeReplicate
from tests.integration.test_streams_freed import started
from tests.live_bound import within
from tests.providers.test_http_client import observed
from tests.providers.test_replicate_left_predictions import image_call
from tests.scrape import parse, total


def counted(metrics: Metrics) -> dict[str, float]:
    samples = parse(metrics.exposition().decode())
    return {
        "answered": total(samples, "klawd_upstream_request_duration_seconds_count"),
        # a poll polled again, told from a request's retries by its `kind`
        "retries": total(samples, "klawd_upstream_retries_total", kind="poll"),
        "request_retries": total(samples, "klawd_upstream_retries_total", kind="request"),
        **{
            f"error:{t}": total(samples, "klawd_upstream_errors_total", type=t)
            for t in ("service_unavailable", "rate_limit_exceeded", "bad_gateway")
        },
        "body_errors": total(samples, "klawd_upstream_body_errors_total", type="bad_gateway"),
    }


def polls_of(fake: FakeReplicate, prediction_id: str) -> list[dict[str, Any]]:
    return [r for r in fake.requests if r["path"] == f"/v1/predictions/{prediction_id}"]


def cancels_of(fake: FakeReplicate, prediction_id: str) -> list[str]:
    path = f"/v1/predictions/{prediction_id}/cancel"
    return [r["method"] for r in fake.requests if r["path"] == path]


# A retry policy whose backoff is short: the polls' waits after a failure are its jitter.
QUICK = RetrySettings(base_delay_s=0.01, max_delay_s=0.02)


class Draws(random.Random):
    """The jitter's source, recorded: each `uniform(low, high)`'s bounds; it draws the middle."""

    def __init__(self) -> None:
        super().__init__(0)
        self.bounds: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.bounds.append((a, b))
        return (a + b) / 2


async def generate(
    fake: FakeReplicate,
    model: str,
    policy: RetrySettings = QUICK,
    rng: random.Random | None = None,
    **settings: Any,
) -> tuple[Any, str, Metrics, ReplicateProvider]:
    """One generation of `fake-owner/<model>` (closed after: its cancels waited for): the
    result or the error raised, the prediction's id, the provider's metrics and the provider.
    `policy`: the retry policy, as build_state gives it the provider; `rng` its jitter's."""
    provider_settings = ProviderSettings(kind="replicate", base_url=fake.base_url, **settings)
    provider = ReplicateProvider("rep", provider_settings, Secret(REPLICATE_TOKEN))
    provider.retry_policy = policy
    if rng is not None:
        provider.rng = rng
    metrics = observed(provider)
    known = set(fake.predictions)
    outcome: Any
    try:
        outcome = await provider.generate_images(
            image_call(provider_settings, f"fake-owner/{model}")
        )
    except Exception as exc:
        outcome = exc
    finally:
        await provider.close()
    (created,) = set(fake.predictions) - known
    return outcome, created, metrics, provider


async def test_a_poll_answered_503_then_429_is_polled_again_after_its_retry_after(
    fake_replicate: FakeReplicate,
) -> None:
    """Poll 1: 503; poll 2: 429 with Retry-After: 1; poll 3 succeeds. Before, the 503 ended the
    call (503 to the client) and cancelled the prediction: the image was lost."""
    result, created, metrics, _ = await generate(fake_replicate, "poll-flaky")
    assert not isinstance(result, Exception), result
    assert [image.url for image in result.images] == [
        f"{fake_replicate.base_url}/files/{created}/out-0.png"
    ]
    polls = polls_of(fake_replicate, created)
    assert len(polls) == 3
    assert polls[2]["at"] - polls[1]["at"] >= 0.99  # the 429's Retry-After (a sleep's floor)
    assert cancels_of(fake_replicate, created) == []
    assert counted(metrics) == {
        "answered": 2,  # the create, the poll that succeeded
        "retries": 2,
        "request_retries": 0,
        "error:service_unavailable": 1,
        "error:rate_limit_exceeded": 1,
        "error:bad_gateway": 0,
        "body_errors": 0,
    }


@pytest.mark.parametrize(
    ("policy", "ceilings"),
    [
        (RetrySettings(base_delay_s=0.01, max_delay_s=0.03), [0.01, 0.02, 0.03]),
        (RetrySettings(base_delay_s=0.02, max_delay_s=8.0, poll_retries=2), [0.02, 0.04]),
    ],
    ids=["capped", "own-count"],
)
async def test_polls_after_a_failure_wait_the_retry_policy_s_backoff_with_full_jitter(
    fake_replicate: FakeReplicate,
    monkeypatch: pytest.MonkeyPatch,
    policy: RetrySettings,
    ceilings: list[float],
) -> None:
    """Every poll answered 500 (no Retry-After): each poll again waits a draw of U(0,
    min(max_delay_s, base_delay_s * 2^n)), n the failures before it, from the provider's retry
    policy (`[providers.NAME.retry]`, as the request's retrier), `poll_retries` times. Before,
    a fixed 0.25 s doubling to 2 s, whatever the policy, and nothing drawn."""
    monkeypatch.setattr(replicate, "POLL_FIRST_S", 0.01)
    draws = Draws()
    error, created, metrics, _ = await generate(fake_replicate, "poll-fails", policy, draws)
    assert isinstance(error, ServiceUnavailable), error
    assert draws.bounds == [(0.0, ceiling) for ceiling in ceilings]
    assert len(polls_of(fake_replicate, created)) == 1 + policy.poll_retries
    assert counted(metrics)["retries"] == policy.poll_retries


async def test_a_poll_s_backoff_is_drawn_within_the_predictions_deadline(
    fake_replicate: FakeReplicate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A policy whose backoff (10 s) is longer than the prediction's `timeout_s` (2 s): the
    jitter's ceiling is what is left of the deadline, so the poll is retried within it instead
    of given up (as the request's retrier draws within its deadline)."""
    monkeypatch.setattr(replicate, "POLL_FIRST_S", 0.01)
    draws = Draws()
    slow = RetrySettings(base_delay_s=10.0, max_delay_s=10.0, poll_retries=1)
    error, created, metrics, _ = await generate(
        fake_replicate, "poll-fails", slow, draws, timeout_s=2
    )
    assert isinstance(error, ServiceUnavailable), error  # the retried poll's 500
    ((low, high),) = draws.bounds
    assert low == 0.0 and 0.0 < high < 2.0
    assert len(polls_of(fake_replicate, created)) == 2
    assert counted(metrics)["retries"] == 1


async def test_a_reset_poll_and_a_poll_broken_off_are_polled_again(
    fake_replicate: FakeReplicate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Poll 1 reset after part of its status line, poll 2's body broken off, poll 3 succeeds.
    Before, the reset ended the call (502) and cancelled the prediction."""
    monkeypatch.setattr(replicate, "POLL_FIRST_S", 0.01)
    result, created, metrics, _ = await generate(fake_replicate, "poll-broken")
    assert not isinstance(result, Exception), result
    assert len(result.images) == 1
    assert len(polls_of(fake_replicate, created)) == 3
    assert cancels_of(fake_replicate, created) == []
    assert counted(metrics) == {
        "answered": 3,  # the create, the poll whose body broke (its headers came), the last
        "retries": 2,
        "request_retries": 0,
        "error:service_unavailable": 0,
        "error:rate_limit_exceeded": 0,
        "error:bad_gateway": 1,  # the reset, before the headers
        "body_errors": 1,
    }


async def test_a_retry_after_beyond_the_deadline_is_not_waited_for(
    fake_replicate: FakeReplicate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 429's Retry-After (1 s) ends after the prediction's deadline (`timeout_s` 0.9 s, the
    429 a few hundredths of a second in): the 429 goes to the client at once, not retried, and
    the prediction is cancelled. (Before, the 503 of poll 1 ended the call.)"""
    monkeypatch.setattr(replicate, "POLL_FIRST_S", 0.01)
    error, created, metrics, _ = await generate(fake_replicate, "poll-flaky", timeout_s=0.9)
    assert isinstance(error, RateLimited)
    assert len(polls_of(fake_replicate, created)) == 2
    assert cancels_of(fake_replicate, created) == ["POST"]
    assert counted(metrics)["retries"] == 1  # the 503's


async def test_a_retry_after_past_the_retry_policy_s_longest_is_not_waited_for(
    fake_replicate: FakeReplicate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 429's Retry-After (1 s) fits in the prediction's deadline but is longer than the
    retry policy waits (`max_retry_after_s` 0.5): the poll gives up as the request's retrier
    does, the 429 to the client at once and the prediction cancelled. Before, the 1 s was
    waited for and the image came back."""
    monkeypatch.setattr(replicate, "POLL_FIRST_S", 0.01)
    policy = RetrySettings(base_delay_s=0.01, max_delay_s=0.02, max_retry_after_s=0.5)
    error, created, metrics, _ = await generate(fake_replicate, "poll-flaky", policy)
    assert isinstance(error, RateLimited), error
    assert len(polls_of(fake_replicate, created)) == 2
    assert cancels_of(fake_replicate, created) == ["POST"]
    assert counted(metrics)["retries"] == 1  # the 503's


def test_the_app_gives_each_provider_its_retry_policy_s_longest_retry_after(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """build_state sets each HTTP provider's `max_retry_after_s` from its retry policy: the test
    config's `[retry] max_retry_after_s = 5` (not the default 30), or a provider's own
    `[providers.X.retry]`."""
    path = tmp_path / "klawd.toml"
    gateway_config(path, free_port(), fake_openai.base_url)

    async def main() -> dict[str, float]:
        async with started(path) as app:
            providers = app.state["klawd"].providers
            return {
                name: provider.retry_policy.max_retry_after_s
                for name, provider in providers.items()
                if isinstance(provider, HttpProvider)
            }

    longest = uvloop.run(within(main(), 30))
    settings = load_settings(path)
    assert longest == {name: settings.provider_retry(name).max_retry_after_s for name in longest}
    assert longest["replicate"] == 5  # the config's [retry], not the default 30


def test_the_app_gives_each_provider_its_retry_policy_s_poll_retries(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """build_state sets each HTTP provider's `poll_retries` from its retry policy: Replicate's
    own `[providers.replicate.retry] poll_retries = 1` here, the others `[retry]`'s default."""
    path = tmp_path / "klawd.toml"
    gateway_config(path, free_port(), fake_openai.base_url)
    path.write_text(path.read_text() + "\n[providers.replicate.retry]\npoll_retries = 1\n")

    async def main() -> dict[str, int]:
        async with started(path) as app:
            providers = app.state["klawd"].providers
            return {
                name: provider.retry_policy.poll_retries
                for name, provider in providers.items()
                if isinstance(provider, HttpProvider)
            }

    retries = uvloop.run(within(main(), 30))
    assert retries["replicate"] == 1
    assert {n for name, n in retries.items() if name != "replicate"} == {3}


async def test_a_hung_poll_is_cut_at_the_predictions_deadline(
    fake_replicate: FakeReplicate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Polls 1-2 answer processing, poll 3 is never answered. Each poll is given at most what is
    left of the prediction's deadline (`timeout_s`), as its headers' and its whole answer's
    bound: poll 3 starts after the sleeps before it (0.25 + 0.5 + 1 s), so its bound is at most
    `timeout_s` less those. Before, every poll had the whole `timeout_s` (the client waited up
    to 4.25 s here, not 2.5). The call ends in 504 and the prediction is cancelled, that cancel
    (which the client waits for) bounded by the provider's `cancel_timeout_s` (0.3 s here), not
    the whole `timeout_s` (2.5 s before d5f5d50) nor the connect timeout (0.5 s: before
    19zzzz)."""
    bounds: list[tuple[str, float | None, float | None]] = []
    request = HttpClient.request

    async def spied(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        headers_s, whole_s = args[2:4]  # (_send passes them positionally)
        bounds.append((method, headers_s, whole_s))
        return await request(self, method, url, *args, **kwargs)

    monkeypatch.setattr(HttpClient, "request", spied)
    timeout_s = 2.5
    error, created, _, _ = await generate(
        fake_replicate,
        "poll-hangs",
        timeout_s=timeout_s,
        connect_timeout_s=0.5,
        cancel_timeout_s=0.3,
    )
    assert isinstance(error, GatewayTimeout)
    polls = [(h, w) for method, h, w in bounds if method == "GET"]
    assert len(polls) == 3
    slept = 0.0
    for (headers_s, whole_s), delay in zip(polls, (0.25, 0.5, 1.0), strict=True):
        slept += delay
        assert whole_s is not None and headers_s is not None
        assert whole_s <= timeout_s - slept + 0.01  # (a timer may fire a little early)
        assert headers_s <= whole_s
    assert cancels_of(fake_replicate, created) == ["POST"]
    assert fake_replicate.predictions[created]["status"] == "canceled"
    _, cancel = [whole_s for method, _, whole_s in bounds if method == "POST"]  # create, cancel
    assert cancel is not None and cancel <= 0.3


@pytest.mark.parametrize("left_s", [0.0, -0.001], ids=["zero", "past"])
async def test_a_poll_given_nothing_left_of_the_deadline_ends_in_504_and_the_cancel(
    fake_replicate: FakeReplicate, monkeypatch: pytest.MonkeyPatch, left_s: float
) -> None:
    """Timer jitter can leave a poll `deadline - loop.time()` of zero or less after the sleep
    before it (the review of session 20 traced it, untested): such a poll is cut at once by
    the HTTP client's bounds, and the call ends in 504 with the prediction cancelled, never a
    hang or another status. Poll 1 as asked; every later one given `left_s`."""
    monkeypatch.setattr(replicate, "POLL_FIRST_S", 0.01)
    poll = ReplicateProvider._poll
    given: list[float] = []

    async def at_the_bound(self: Any, prediction: Any, within_s: float) -> Any:
        given.append(within_s)
        return await poll(self, prediction, within_s if len(given) == 1 else left_s)

    monkeypatch.setattr(ReplicateProvider, "_poll", at_the_bound)
    error, created, _, _ = await generate(fake_replicate, "poll-hangs", timeout_s=30)
    assert isinstance(error, GatewayTimeout), error
    assert len(given) >= 2
    assert cancels_of(fake_replicate, created) == ["POST"]
