"""A gateway with self-signup on, for the Mission Control tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Gateway, free_port, gateway_config, start_gateway, stop
from tests.fakes.openai_upstream import FakeOpenAI

MISSION_CONTROL = """
[mission_control]
signup = true

[webhooks]
allow_private_networks = true
poll_interval_s = 0.2
"""


@pytest.fixture(scope="module")
def mc_gateway(
    fake_openai: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("mission-control")
    port = free_port()
    gateway_config(directory / "klawd.toml", port, fake_openai.base_url, extra=MISSION_CONTROL)
    running = start_gateway(directory / "klawd.toml", port)
    yield running
    stop(running.process)
