"""Upstream capacity (routing/capacity.py), one contract for the in-process accounting of the
embedded store and the shared one on a real redis-server (and a Redis Cluster): caps, token
settling, rests and their kind. On Redis a second instance plays another replica.

Redis keeps its own clock: the buckets below refill at 2 requests / 1000 tokens per minute, so
nothing here depends on how fast the test runs unless it takes many seconds (noted per bound)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.routing.capacity import Capacity, MemoryCapacity
from gateway.routing.catalog import Catalog, CatalogEntry
from gateway.settings import load_settings
from gateway.store.base import StoreError, open_store
from gateway.store.redis import RedisStore
from gateway.store.redis_capacity import RedisCapacity
from tests.redis_server import RedisClusterServers, RedisServer

CONFIG = """
[providers.east]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
requests_per_minute = 2
[providers.west]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
tokens_per_minute = 1000
[providers.free]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
[[models]]
id = "team/gpt"
deployments = [{ provider = "east" }, { provider = "west" }, { provider = "free" }]
"""


@pytest.fixture
def deployments(tmp_path: Path) -> dict[str, CatalogEntry]:
    path = tmp_path / "klawd.toml"
    path.write_text(CONFIG)
    entry = Catalog(load_settings(path), {}).entries["team/gpt"]
    return {d.model.provider: d for d in entry.deployments}


Replicas = Callable[[], Capacity]


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def replica(request: pytest.FixtureRequest) -> AsyncIterator[Replicas]:
    """A factory of capacities sharing one state (in memory: one and the same)."""
    if request.param == "memory":
        memory = MemoryCapacity()
        yield lambda: memory
        return
    server: RedisServer | RedisClusterServers = request.getfixturevalue(
        "redis_server" if request.param == "redis" else "redis_cluster"
    )
    server.flush()
    opened: list[tuple[RedisStore, RedisCapacity]] = []

    def another() -> Capacity:
        store = open_store(server.url)
        assert isinstance(store, RedisStore)
        capacity = RedisCapacity(store)
        opened.append((store, capacity))
        return capacity

    yield another
    for store, capacity in opened:
        await capacity.close()
        await store.close()


async def test_a_request_cap_is_shared_and_says_when_it_refills(
    replica: Replicas, deployments: dict[str, CatalogEntry]
) -> None:
    one, two = replica(), replica()
    east = deployments["east"]
    assert (await one.take([east], 1)).deployment is east
    assert (await two.take([east], 1)).deployment is east
    for capacity in (one, two):
        taken = await capacity.take([east], 1)
        # 2 per minute: one request back in 30 s, less what refilled while the test ran
        assert taken.deployment is None and 25 < taken.back_in_s <= 30
        assert not taken.failing


async def test_the_first_deployment_under_its_caps_is_taken(
    replica: Replicas, deployments: dict[str, CatalogEntry]
) -> None:
    capacity = replica()
    east, west = deployments["east"], deployments["west"]
    chosen = [(await capacity.take([east, west], 400)).deployment for _ in range(5)]
    assert chosen[:4] == [east, east, west, west], "east: 2 requests; west: 1000 tokens"
    assert chosen[4] is None


async def test_tokens_are_settled_to_the_actual_usage(
    replica: Replicas, deployments: dict[str, CatalogEntry]
) -> None:
    one, two = replica(), replica()
    west = deployments["west"]
    assert (await one.take([west], 990)).deployment is west
    # 10 left, +16.7 per second: 300 more within 17 s of the test is impossible
    assert (await two.take([west], 300)).deployment is None
    one.settle(west, 990, 100)
    await settled(one)
    assert (await two.take([west], 300)).deployment is west


async def settled(capacity: Capacity) -> None:
    """Redis settles in the background: wait for it (bounded) before looking."""
    pending: Any = getattr(capacity, "_pending", ())
    for task in list(pending):
        await task


async def test_a_rest_is_seen_by_every_replica_with_its_kind(
    replica: Replicas, deployments: dict[str, CatalogEntry]
) -> None:
    one, two = replica(), replica()
    east, free = deployments["east"], deployments["free"]
    await one.rest(free.key, 60)
    await one.rest(east.key, 30, failing=True)
    # east is capped: its take is the shared call, which reads the rests
    assert (await two.take([east], 1)).deployment is None
    refresh = getattr(two, "_refresh", None)
    if refresh is not None:
        await refresh()  # what the once-a-second background refresh does
    assert 55 < two.resting_s(free.key) <= 60
    taken = await two.take([free], 1)
    assert taken.deployment is None and 55 < taken.back_in_s <= 60 and not taken.failing
    taken = await two.take([east], 1)
    assert taken.deployment is None and taken.failing, "only a failing rest: an open circuit"
    assert {r.key: r.failing for r in two.rests()} == {free.key: False, east.key: True}


async def test_a_longer_rest_wins_and_a_shorter_one_does_not_shorten_it(
    replica: Replicas, deployments: dict[str, CatalogEntry]
) -> None:
    capacity = replica()
    free = deployments["free"]
    await capacity.rest(free.key, 60)
    await capacity.rest(free.key, 5)
    assert capacity.resting_s(free.key) > 55


async def test_redis_down_falls_back_to_this_process_accounting(
    deployments: dict[str, CatalogEntry],
) -> None:
    class Down(RedisStore):
        def __init__(self) -> None:
            pass

        async def fcall(self, function: str, keys: list[str], args: list[Any]) -> Any:
            raise StoreError("redis store failed: ConnectionError")

    capacity = RedisCapacity(Down())
    east = deployments["east"]
    assert (await capacity.take([east], 1)).deployment is east
    assert (await capacity.take([east], 1)).deployment is east
    assert (await capacity.take([east], 1)).deployment is None, "the same cap, kept locally"
    await capacity.rest(deployments["free"].key, 60)
    assert capacity.resting_s(deployments["free"].key) > 55
    await capacity.close()
