"""/metrics with two Granian workers (Redis store): every worker's values, summed."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from tests.conftest import Gateway, free_port, gateway_config, start_gateway, stop
from tests.fakes.openai_upstream import FakeOpenAI
from tests.live_bound import running_deadline
from tests.redis_server import RedisServer
from tests.scrape import parse, scrape, total

pytestmark = pytest.mark.redis

ROUTE = "/v1/chat/completions"
REQUESTS = 60


@pytest.fixture
def two_workers(
    fake_openai: FakeOpenAI, redis_server: RedisServer, tmp_path: Path
) -> Iterator[tuple[Gateway, Path]]:
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale file of an earlier run")
    config = tmp_path / "klawd.toml"
    gateway_config(config, port, fake_openai.base_url, store_url=redis_server.url)
    gateway = start_gateway(config, port, {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}, workers=2)
    yield gateway, metrics_dir
    stop(gateway.process)


def per_worker_counts(metrics_dir: Path, tmp_path: Path) -> list[float]:
    """Each worker's own count of chat requests, read from its file alone."""
    counts = []
    for index, db in enumerate(sorted(metrics_dir.glob("counter_*.db"))):
        alone = tmp_path / f"worker-{index}"
        alone.mkdir()
        shutil.copy(db, alone / db.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        samples = parse(generate_latest(registry).decode())
        counts.append(total(samples, "klawd_http_requests_total", route=ROUTE))
    return counts


def test_metrics_sum_the_requests_of_both_workers(
    two_workers: tuple[Gateway, Path], tmp_path: Path
) -> None:
    gateway, metrics_dir = two_workers
    key = gateway.new_key()
    body = {"model": "openai/gpt-fake", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(REQUESTS):  # a new connection each time, so both workers get some
        response = httpx.post(
            f"{gateway.base_url}{ROUTE}",
            headers={"authorization": f"Bearer {key}"},
            json=body,
            timeout=20,
        )
        assert response.status_code == 200
    # Each worker moves its buffered updates into the shared files once a second.
    passed = running_deadline(10)
    while True:
        _, samples = scrape(f"{gateway.base_url}/metrics")
        counted = total(samples, "klawd_http_requests_total", route=ROUTE, status_class="2xx")
        if counted == REQUESTS or passed():
            break
        time.sleep(0.2)
    assert counted == REQUESTS
    assert total(samples, "klawd_requests_total", model="openai/gpt-fake") == REQUESTS
    counts = per_worker_counts(metrics_dir, tmp_path)
    assert not (metrics_dir / "counter_999999.db").exists(), "the stale file was not cleaned"
    assert sum(counts) == REQUESTS
    assert len([c for c in counts if c > 0]) == 2, f"one worker served everything: {counts}"
    assert total(samples, "klawd_build_info") == 1  # a max gauge, not summed
