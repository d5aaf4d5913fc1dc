"""conftest's kill_test_gateways: a gateway the test started is stopped when the test ends, however
it ends; a session-scoped fixture's gateway lives on to its own fixture's end, even when a
function-scoped fixture first asked for it.

The tests run in this file's order: the first leaves a gateway of its own running (as a test
whose assert fails before its stop does) and the last looks at what is still alive.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Gateway, free_port, gateway_config, start_gateway, stop
from tests.fakes.openai_upstream import FakeOpenAI

# The processes the first test left, for the last to look at.
LEFT: dict[str, subprocess.Popen[bytes]] = {}


def own_gateway(fake_openai: FakeOpenAI, directory: Path) -> Gateway:
    port = free_port()
    config = directory / "klawd.toml"
    gateway_config(config, port, fake_openai.base_url)
    return start_gateway(config, port)


@pytest.fixture(scope="session")
def session_gateway(
    fake_openai: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    running = own_gateway(fake_openai, tmp_path_factory.mktemp("session-gateway"))
    yield running
    stop(running.process)


@pytest.fixture
def late_session_gateway(request: pytest.FixtureRequest) -> Gateway:
    """A session's gateway first asked for inside a function-scoped fixture (as the provider
    conformance tests ask for theirs): it is still the session's, not the test's."""
    gateway: Gateway = request.getfixturevalue("session_gateway")
    return gateway


def test_a_test_leaves_its_own_gateway_running(
    fake_openai: FakeOpenAI, tmp_path: Path, late_session_gateway: Gateway
) -> None:
    running = own_gateway(fake_openai, tmp_path)
    LEFT["own"] = running.process
    LEFT["session"] = late_session_gateway.process
    assert running.process.poll() is None


def test_the_test_s_gateway_was_stopped_and_the_session_s_kept(session_gateway: Gateway) -> None:
    if not LEFT:
        pytest.skip("looks at what the test before it left")
    assert LEFT["own"].poll() is not None, "the first test's gateway outlived it"
    assert LEFT["session"] is session_gateway.process
    assert session_gateway.process.poll() is None, "the session's gateway was stopped early"
