"""An admitted request cancelled during its upstream call (its client gone, where the server
cancels the request's task; or a shutdown's drain) is settled at no cost with the status that
says why: 499 (client closed, as an abandoned stream's), or the drain's 503, never the 500 of a
gateway failure. The app runs in process on the embedded store; the fake upstream holds the
answer's headers back until the gateway lets go (`hang-headers`), so the request is surely in
its upstream call when it is cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import uvloop

from gateway.drain import DRAIN
from tests.conftest import free_port, gateway_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.integration.test_streams_freed import started
from tests.live_bound import polls_async, within

BOUND_S = 10  # every wait here is bounded by this (never a timing assertion)
HANGING = """
[[models]]
id = "openai/hang-headers"
provider = "openai"
upstream_model = "hang-headers"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
"""


@pytest.fixture
def config(tmp_path: Path, fake_openai: FakeOpenAI) -> Iterator[Path]:
    path = tmp_path / "klawd.toml"
    gateway_config(path, free_port(), fake_openai.base_url, extra=HANGING)
    yield path


def ledger_status(database: Path, request_id: str) -> int | None:
    with contextlib.closing(sqlite3.connect(database)) as db:
        row = db.execute(
            "SELECT status, cost_micros FROM usage_ledger WHERE request_id = ?", (request_id,)
        ).fetchone()
    if row is None:
        return None
    assert row[1] == 0, "settled at no cost"
    return int(row[0])


@pytest.mark.parametrize(("how", "status"), [("client", 499), ("drain", 503)])
def test_an_admitted_single_answer_cancelled_is_settled_with_why(
    config: Path, fake_openai: FakeOpenAI, how: str, status: int
) -> None:
    async def main() -> None:
        async with started(config) as app:
            asked = len(fake_openai.requests)
            body = orjson.dumps(
                {"model": "openai/hang-headers", "messages": [{"role": "user", "content": "x"}]}
            )
            request = asyncio.ensure_future(
                app.request("/v1/chat/completions", body, app.key, request_id=f"req_{how}")
            )
            turns = polls_async(BOUND_S, 0.01)
            while len(fake_openai.requests) == asked:  # the upstream has the request
                assert await anext(turns, None) is not None, "the request never reached it"
            if how == "drain":
                request.cancel(DRAIN)
            else:
                request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await request
            database = config.parent / "klawd.db"
            while (found := ledger_status(database, f"req_{how}")) is None:
                assert await anext(turns, None) is not None, "the request was never settled"
            assert found == status

    uvloop.run(within(main(), 30))
