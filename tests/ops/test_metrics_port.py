"""`server.metrics_port`: /metrics on its own port, and not on the public one."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.conftest import free_port, gateway_config, start_gateway, stop
from tests.fakes.openai_upstream import FakeOpenAI
from tests.live_bound import running_deadline
from tests.scrape import scrape, total


def test_metrics_port_serves_metrics_and_the_main_port_does_not(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "klawd.toml"
    gateway_config(config, port, fake_openai.base_url)
    config.write_text(
        config.read_text().replace("[server]\n", f"[server]\nmetrics_port = {metrics_port}\n", 1)
    )
    gateway = start_gateway(config, port)
    try:
        assert httpx.get(f"{gateway.base_url}/healthz", timeout=10).status_code == 200
        assert httpx.get(f"{gateway.base_url}/metrics", timeout=10).status_code == 404
        # the worker moves its buffered updates into the shared files once a second: the two
        # requests above may land in two flushes, so both are waited for
        passed = running_deadline(10)
        while True:
            _, samples = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
            healthz = total(samples, "klawd_http_requests_total", route="/healthz")
            metrics = total(samples, "klawd_http_requests_total", route="/metrics")
            if (healthz >= 2 and metrics >= 1) or passed():
                break
            time.sleep(0.2)
        assert healthz >= 2  # the start-up probe and the one above
        assert metrics >= 1
    finally:
        stop(gateway.process)
