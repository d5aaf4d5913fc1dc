"""The HTTP client's tests (and the deadline's and the event stream bodies' against it) run on
both event loops: asyncio's and uvloop (the gateway's)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.nodeid.startswith(
        (
            "tests/providers/test_http_client.py",
            "tests/providers/test_deadline_answer_in_hand.py",
            "tests/providers/test_event_stream_bodies.py",
            "tests/providers/test_plain_heads.py",
        )
    ):
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}
