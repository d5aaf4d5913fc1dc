"""Many deployments of one model: config checks, the balancer's policies, upstream capacity
(rests and caps) and the retrier's walk over siblings, with an injected clock. No sockets."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from gateway.errors import RateLimited, ServiceUnavailable
from gateway.providers.base import parse_duration, retry_after_from
from gateway.routing.balance import Balancer
from gateway.routing.capacity import MemoryCapacity
from gateway.routing.catalog import Catalog, CatalogEntry
from gateway.routing.health import Health
from gateway.routing.retry import Retrier
from gateway.routing.router import resolve_chat
from gateway.schemas.openai import decode_chat_request
from gateway.settings import (
    ConfigError,
    DeploymentSettings,
    RetrySettings,
    RoutingSettings,
    Settings,
    load_settings,
)

PROVIDERS = """
[providers.east]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
requests_per_minute = 2
[providers.west]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
tokens_per_minute = 1000
[providers.backup]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
"""
MODEL = """
[[models]]
id = "team/gpt"
deployments = [
  { provider = "east", upstream_model = "gpt-e", weight = 3 },
  { provider = "west", upstream_model = "gpt-w", weight = 1 },
  { provider = "backup", upstream_model = "gpt-b", priority = 1 },
]
"""


def settings_from(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "klawd.toml"
    path.write_text(text)
    return load_settings(path)


def refusal(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        settings_from(tmp_path, text)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return Catalog(settings_from(tmp_path, PROVIDERS + MODEL), {})


# -- configuration ----------------------------------------------------------------------------


def test_deployments_make_one_model_with_one_entry_per_deployment(catalog: Catalog) -> None:
    entry = catalog.entries["team/gpt"]
    assert [d.key for d in entry.deployments] == [
        "team/gpt@east",
        "team/gpt@west",
        "team/gpt@backup",
    ]
    assert [d.model.provider for d in entry.deployments] == ["east", "west", "backup"]
    assert [d.model.upstream_model for d in entry.deployments] == ["gpt-e", "gpt-w", "gpt-b"]
    assert [(d.weight, d.priority) for d in entry.deployments] == [(3, 0), (1, 0), (1, 1)]
    assert all(d.model.id == "team/gpt" for d in entry.deployments)
    assert catalog.deployments["team/gpt@west"].provider.tokens_per_minute == 1000


def test_provider_and_upstream_model_remain_one_deployment_keyed_by_the_model() -> None:
    turbo = Catalog(load_settings(None), {}).entries["openai/gpt-4-turbo"]
    assert [d.key for d in turbo.deployments] == ["openai/gpt-4-turbo"]
    assert turbo.deployments[0].model.provider == "openai"


def test_a_model_with_both_provider_and_deployments_stops_start_up(tmp_path: Path) -> None:
    message = refusal(
        tmp_path,
        PROVIDERS
        + '[[models]]\nid = "team/x"\nprovider = "east"\n'
        + 'deployments = [{ provider = "west" }]\n',
    )
    assert "`models[" in message and "deployments" in message and "provider" in message


def test_an_unknown_provider_in_a_deployment_names_the_field(tmp_path: Path) -> None:
    message = refusal(
        tmp_path, PROVIDERS + '[[models]]\nid = "team/x"\ndeployments = [{ provider = "nope" }]\n'
    )
    assert ".deployments[0].provider` = 'nope' is not a configured provider" in message


@pytest.mark.parametrize("weight", [0, -2])
def test_a_weight_below_one_names_the_field(tmp_path: Path, weight: int) -> None:
    message = refusal(
        tmp_path,
        PROVIDERS
        + '[[models]]\nid = "team/x"\n'
        + f'deployments = [{{ provider = "east", weight = {weight} }}]\n',
    )
    assert ".deployments[0].weight`" in message and ">= 1" in message


def test_one_provider_twice_in_a_model_is_refused(tmp_path: Path) -> None:
    message = refusal(
        tmp_path,
        PROVIDERS
        + '[[models]]\nid = "team/x"\n'
        + 'deployments = [{ provider = "east" }, { provider = "east", upstream_model = "b" }]\n',
    )
    assert ".deployments[1].provider` = 'east' is named twice" in message


def test_a_builtin_model_can_be_given_deployments(tmp_path: Path) -> None:
    settings = settings_from(
        tmp_path,
        PROVIDERS
        + '[[models]]\nid = "openai/gpt-4-turbo"\n'
        + 'deployments = [{ provider = "openai" }, { provider = "east" }]\n',
    )
    turbo = Catalog(settings, {}).entries["openai/gpt-4-turbo"]
    assert [d.model.provider for d in turbo.deployments] == ["openai", "east"]
    assert turbo.model.input_usd_per_mtok > 0, "the built-in prices stay"


def test_routing_defaults_and_bad_policy(tmp_path: Path) -> None:
    settings = load_settings(None)
    assert settings.routing.balance == "weighted" and settings.routing.cooldown_s == 30
    message = refusal(tmp_path, '[routing]\nbalance = "random"\n')
    assert "`routing.balance`" in message


# -- the balancer -----------------------------------------------------------------------------


def tier0(catalog: Catalog) -> list[CatalogEntry]:
    return [d for d in catalog.entries["team/gpt"].deployments if d.priority == 0]


def test_weighted_is_smooth_round_robin_exact_and_interleaved(catalog: Catalog) -> None:
    balancer = Balancer("weighted")
    picks = [balancer.order(tier0(catalog))[0].model.provider for _ in range(8)]
    assert picks == ["east", "east", "west", "east"] * 2


def test_lower_priority_tier_comes_after_every_deployment_of_the_first(catalog: Catalog) -> None:
    balancer = Balancer("weighted")
    for _ in range(5):
        order = balancer.order(catalog.entries["team/gpt"].deployments)
        assert order[-1].model.provider == "backup"
        assert {d.model.provider for d in order[:2]} == {"east", "west"}


def test_least_busy_picks_the_fewest_in_flight_per_weight(catalog: Catalog) -> None:
    balancer = Balancer("least-busy", random.Random(1))
    east, west = tier0(catalog)
    for _ in range(3):
        balancer.started(east.key)
    assert balancer.order([east, west])[0] is west, "3 in flight / weight 3 > 0 / 1"
    balancer.started(west.key)
    balancer.started(west.key)
    assert balancer.order([east, west])[0] is east, "3/3 < 2/1"
    for _ in range(3):
        balancer.finished(east.key)
    assert balancer.in_flight(east.key) == 0


def test_least_latency_prefers_the_faster_of_two_and_keeps_weights(catalog: Catalog) -> None:
    balancer = Balancer("least-latency", random.Random(3))
    east, west = tier0(catalog)
    balancer.observe(east.key, 0.5)
    balancer.observe(west.key, 0.1)
    picks = Counter(balancer.order([east, west])[0].model.provider for _ in range(200))
    assert picks == {"west": 200}, "two candidates: the faster one always wins"
    three = [*tier0(catalog), catalog.deployments["team/gpt@backup"]]
    three = [CatalogEntry(d.model, d.provider, None, d.key, d.weight, 0) for d in three]
    balancer.observe(three[2].key, 0.1)
    picks = Counter(balancer.order(three)[0].model.provider for _ in range(2000))
    # east (weight 3) is drawn most but is the slowest, so it never wins a pair; west and
    # backup tie on latency (the first drawn wins): each wins half.
    assert picks["east"] == 0
    assert 0.35 < picks["west"] / 2000 < 0.65


def test_an_unknown_latency_is_tried_first(catalog: Catalog) -> None:
    balancer = Balancer("least-latency", random.Random(5))
    east, west = tier0(catalog)
    balancer.observe(east.key, 0.05)
    assert balancer.order([east, west])[0] is west


# -- upstream capacity ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_a_capped_provider_is_skipped_until_its_bucket_refills(catalog: Catalog) -> None:
    clock = Clock()
    capacity = MemoryCapacity(clock)
    east = catalog.deployments["team/gpt@east"]  # 2 requests per minute
    assert (await capacity.take([east], 10)).deployment is east
    assert (await capacity.take([east], 10)).deployment is east
    taken = await capacity.take([east], 10)
    assert taken.deployment is None and taken.back_in_s == pytest.approx(30.0)
    assert not taken.failing
    clock.now += 30
    assert (await capacity.take([east], 10)).deployment is east


async def test_tokens_are_reserved_then_settled_to_actual_usage(catalog: Catalog) -> None:
    clock = Clock()
    capacity = MemoryCapacity(clock)
    west = catalog.deployments["team/gpt@west"]  # 1000 tokens per minute
    assert (await capacity.take([west], 800)).deployment is west
    assert (await capacity.take([west], 300)).deployment is None, "800 reserved, 200 left"
    capacity.settle(west, 800, 100)
    assert (await capacity.take([west], 300)).deployment is west, "settled to 100 used"
    big = await capacity.take([west], 5000)
    assert big.deployment is None, "more than the budget needs a full bucket"
    clock.now += 60
    assert (await capacity.take([west], 5000)).deployment is west


async def test_a_rest_skips_the_deployment_and_says_when_it_is_back(catalog: Catalog) -> None:
    clock = Clock()
    capacity = MemoryCapacity(clock)
    east, west = tier0(catalog)
    await capacity.rest(east.key, 7)
    assert (await capacity.take([east, west], 1)).deployment is west
    await capacity.rest(west.key, 3, failing=True)
    taken = await capacity.take([east, west], 1)
    assert taken.deployment is None and taken.back_in_s == 3 and not taken.failing
    clock.now += 7
    assert (await capacity.take([east, west], 1)).deployment is east
    assert [r.key for r in capacity.rests()] == []


# -- the retrier over deployments -------------------------------------------------------------

POLICY = RetrySettings(attempts=3, base_delay_s=0.25, max_delay_s=8.0, max_retry_after_s=5)


def retrier(clock: Clock, capacity: MemoryCapacity | None = None) -> Retrier:
    return Retrier(
        lambda _target: POLICY,
        Health(clock=clock),
        rng=random.Random(7),
        sleep=clock.sleep,
        clock=clock,
        balancer=Balancer("weighted"),
        capacity=capacity or MemoryCapacity(clock),
        cooldown_s=30,
    )


def scripted(outcomes: dict[str, list[Exception | str]]) -> tuple[list[str], object]:
    calls: list[str] = []

    async def attempt(target: CatalogEntry) -> str:
        calls.append(target.model.provider)
        outcome = outcomes[target.model.provider].pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return calls, attempt


async def test_a_500_is_retried_on_the_sibling_at_once(catalog: Catalog) -> None:
    clock = Clock()
    calls, attempt = scripted({"east": [ServiceUnavailable("500", retryable=True)], "west": ["ok"]})
    result, served, tries = await retrier(clock).call_targets(
        [catalog.entries["team/gpt"]],
        attempt,  # type: ignore[arg-type]
    )
    assert (result, served.model.provider, calls) == ("ok", "west", ["east", "west"])
    assert clock.slept == [], "another deployment needs no backoff"
    assert [t.error for t in tries] == ["service_unavailable", None]


async def test_a_429_rests_its_deployment_for_the_retry_after(catalog: Catalog) -> None:
    clock = Clock()
    capacity = MemoryCapacity(clock)
    calls, attempt = scripted(
        {
            "east": [RateLimited("429", retry_after_s=7, retryable=True)],
            "west": ["ok"] * 10,
        }
    )
    model = catalog.entries["team/gpt"]
    r = retrier(clock, capacity)
    for _ in range(6):
        _, served, _ = await r.call_targets([model], attempt, tokens=1)  # type: ignore[arg-type]
        assert served.model.provider == "west"
    assert calls.count("east") == 1, "east gets nothing until its Retry-After"
    assert capacity.resting_s("team/gpt@east") == 7


async def test_the_lower_tier_serves_only_when_the_first_cannot(catalog: Catalog) -> None:
    clock = Clock()
    calls, attempt = scripted(
        {
            "east": [ServiceUnavailable("500", retryable=True)],
            "west": [ServiceUnavailable("500", retryable=True)],
            "backup": ["ok"],
        }
    )
    _, served, _ = await retrier(clock).call_targets(
        [catalog.entries["team/gpt"]],
        attempt,  # type: ignore[arg-type]
    )
    assert served.model.provider == "backup" and calls[-1] == "backup"
    assert set(calls[:2]) == {"east", "west"}


async def test_every_deployment_capped_is_429_upstream_capacity(tmp_path: Path) -> None:
    settings = settings_from(
        tmp_path,
        PROVIDERS
        + '[[models]]\nid = "team/capped"\n'
        + 'deployments = [{ provider = "east" }, { provider = "west" }]\n',
    )
    model = Catalog(settings, {}).entries["team/capped"]
    clock = Clock()
    capacity = MemoryCapacity(clock)
    calls, attempt = scripted({"east": ["ok"] * 5, "west": ["ok"] * 5})
    r = retrier(clock, capacity)
    served = [
        (await r.call_targets([model], attempt, tokens=600))[1].model.provider  # type: ignore[arg-type]
        for _ in range(3)
    ]
    assert sorted(served) == ["east", "east", "west"], "east: 2 rpm, west: 1000 tpm"
    with pytest.raises(RateLimited) as caught:
        await r.call_targets([model], attempt, tokens=600)  # type: ignore[arg-type]
    assert caught.value.code == "upstream_capacity"
    assert caught.value.retry_after_s == pytest.approx(12.0), "west has 400 of 600 tokens back"
    assert len(calls) == 3, "nothing sent upstream"


async def test_open_circuits_on_every_deployment_stay_503(tmp_path: Path) -> None:
    settings = settings_from(
        tmp_path,
        PROVIDERS
        + '[[models]]\nid = "team/open"\n'
        + 'deployments = [{ provider = "backup" }, { provider = "openai" }]\n',
    )
    model = Catalog(settings, {}).entries["team/open"]
    clock = Clock()
    r = retrier(clock)
    calls, attempt = scripted(
        {p: [ServiceUnavailable("500", retryable=True)] * 40 for p in ("openai", "backup")}
    )
    for _ in range(6):
        with pytest.raises(ServiceUnavailable):
            await r.call_targets([model], attempt)  # type: ignore[arg-type]
    before = len(calls)
    with pytest.raises(ServiceUnavailable) as caught:
        await r.call_targets([model], attempt)  # type: ignore[arg-type]
    assert "circuit open" in caught.value.message
    assert len(calls) == before


# -- upstream headers and request-level fallbacks ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5s", 0.5)],
)
def test_openai_reset_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5", "1s junk"])
def test_nonsense_durations_are_ignored(text: str) -> None:
    assert parse_duration(text) is None


def test_the_reset_of_the_spent_limit_is_the_retry_after() -> None:
    headers = {
        "x-ratelimit-reset-requests": "6m0s",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-tokens": "20ms",
        "x-ratelimit-remaining-tokens": "5000",
    }
    assert retry_after_from(headers) == 360.0
    assert retry_after_from({**headers, "x-ratelimit-remaining-requests": "3"}) == 0.02
    assert retry_after_from({**headers, "retry-after": "2"}) == 2.0


def test_request_models_are_tried_after_the_model_and_its_fallbacks() -> None:
    catalog = Catalog(load_settings(None), {})
    request = decode_chat_request(
        b'{"model":"openai/gpt-4-turbo","messages":[{"role":"user","content":"hi"}],'
        b'"models":["anthropic/claude-sonnet-4","openai/gpt-4-turbo","klawd/standard"]}'
    )
    chain = [e.model.id for e in resolve_chat(catalog, request)]
    assert chain == ["openai/gpt-4-turbo", "anthropic/claude-sonnet-4"]


def test_an_unknown_request_fallback_is_404_naming_it() -> None:
    catalog = Catalog(load_settings(None), {})
    request = decode_chat_request(
        b'{"model":"openai/gpt-4-turbo","messages":[{"role":"user","content":"hi"}],'
        b'"models":["nope/nothing"]}'
    )
    with pytest.raises(Exception) as caught:
        resolve_chat(catalog, request)
    assert getattr(caught.value, "param", None) == "models[0]"
    assert getattr(caught.value, "code", None) == "model_not_found"


def test_every_routing_and_deployment_field_is_documented() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    routing = docs.split("## `[routing]`", 1)[1].split("\n## ", 1)[0]
    for field in msgspec.structs.fields(RoutingSettings):
        assert f"| `{field.name}` |" in routing, f"routing.{field.name} is not documented"
    deployments = docs.split("### `deployments = [{ … }]` (each)", 1)[1].split("\n## ", 1)[0]
    for field in msgspec.structs.fields(DeploymentSettings):
        assert f"| `{field.name}` |" in deployments, f"deployments.{field.name} is undocumented"
    providers = docs.split("## `[providers.NAME]`", 1)[1].split("\n## ", 1)[0]
    for name in ("requests_per_minute", "tokens_per_minute"):
        assert f"| `{name}` |" in providers
    example = load_settings(Path(__file__).resolve().parents[2] / "docs" / "klawd.example.toml")
    turbo = Catalog(example, {}).entries["openai/gpt-4-turbo"]
    assert [d.priority for d in turbo.deployments] == [0, 0, 1]
