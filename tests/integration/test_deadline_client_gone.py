"""A client that leaves in the very loop turn in which the request's deadline cuts its try: the
app in process (tests/integration/test_streams_freed.py's `App`), its retrier's cuts made due
by the test (`DrivenWheel`) and the request's task cancelled as a server does when its client
leaves, in the order the test says; what /metrics' text counts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import uvloop

from tests.conftest import free_port, gateway_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.integration.test_request_deadline import PATIENT, with_deadline
from tests.integration.test_streams_freed import settled, started
from tests.live_bound import within
from tests.scrape import parse, total
from tests.unit.test_retry_deadline import DrivenWheel


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAI) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("deadline-gone") / "klawd.toml"
    # `hang-headers` holds its headers back for seconds: the try waits for them when it is cut
    extra = PATIENT.format(url=fake_openai.base_url)
    gateway_config(path, free_port(), fake_openai.base_url, extra=extra)
    with_deadline(path, 30)
    yield path


CUT = {"upstream gateway_timeout": 1, "settled 5xx": 1, "settled 4xx": 0}
GONE = {"upstream gateway_timeout": 0, "settled 5xx": 0, "settled 4xx": 1}  # (499)


@pytest.mark.parametrize(
    ("order", "ended", "counted"),
    [
        ("deadline", 504, CUT),
        ("deadline, client", None, GONE),
        ("client, deadline", None, GONE),
        ("client", None, GONE),
    ],
)
def test_a_client_gone_in_the_deadline_s_turn_is_a_client_gone_in_every_count(
    config: Path, fake_openai: FakeOpenAI, order: str, ended: int | None, counted: dict[str, float]
) -> None:
    """The retrier ends a try that both the deadline and the client's leaving cancelled as a
    client gone (no 504 for nobody; settled 499); the cut upstream call is then no upstream
    failure either, as for any client gone, whichever of the two came first in the turn."""

    async def main() -> tuple[int | None, dict[str, float]]:
        loop = asyncio.get_running_loop()
        async with started(config) as app:
            state = app.state["klawd"]
            wheel = state.retrier._cuts = DrivenWheel(loop)
            metrics = state.meter.observer.metrics
            before = parse(metrics.exposition().decode())
            asked = len(fake_openai.requests)
            body = {
                "model": "patient/hang-headers",
                "messages": [{"role": "user", "content": "hi"}],
            }
            call = asyncio.ensure_future(
                app.request("/v1/chat/completions", orjson.dumps(body), app.key)
            )
            while len(fake_openai.requests) == asked:  # the try was sent: it waits for headers
                await asyncio.sleep(0.01)
            assert wheel.slots, "the try's cut is armed"
            request = app.requests[-1]  # the request's own task, as the server runs it
            for step in order.split(", "):
                if step == "deadline":
                    wheel.run()  # the cut is queued for the loop's next turn ...
                else:
                    loop.call_soon(request.cancel)  # ... and the client leaves in that turn
            try:
                status: int | None = (await call)[0]
            except asyncio.CancelledError:
                status = None
            await settled()  # the settlement's metrics
            after = parse(metrics.exposition().decode())

            def moved(name: str, **labels: str) -> float:
                return total(after, name, **labels) - total(before, name, **labels)

            return status, {
                "upstream gateway_timeout": moved(
                    "klawd_upstream_errors_total", type="gateway_timeout"
                ),
                "settled 5xx": moved("klawd_requests_total", status_class="5xx"),
                "settled 4xx": moved("klawd_requests_total", status_class="4xx"),
            }

    assert uvloop.run(within(main(), 30)) == (ended, counted)
