"""`klawd_upstream_body_errors_total`: an upstream call counted answered (its headers came, in
`klawd_upstream_request_duration_seconds`) whose answer then failed, counted once, by provider
and the gateway error type it became; read from /metrics' text, with the app in process as
Granian drives it (tests/integration/test_streams_freed.py's `App`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from tests.conftest import free_port, gateway_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.integration.test_streams_freed import STREAM_ENDS, settled, started
from tests.live_bound import within
from tests.scrape import parse, total

BODY_ERRORS = "klawd_upstream_body_errors_total"
TYPES = ("bad_gateway", "service_unavailable", "gateway_timeout", "rate_limit_exceeded")
# the fake's stream that says mid-stream it is rate limited
RATE_LIMITED = """
[[models]]
id = "openai/rate-limit-event"
provider = "openai"
upstream_model = "rate-limit-event"
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAI) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("body-errors") / "klawd.toml"
    gateway_config(path, free_port(), fake_openai.base_url, extra=RATE_LIMITED)
    yield path


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/messages", "/v1/responses"])
def test_a_stream_the_upstream_broke_after_its_headers_is_a_body_error(
    config: Path, route: str
) -> None:
    """A stream whose body the upstream broke after its headers (cut, its own error event,
    silence past the idle timeout; also a rate limit it says mid-stream) is a body error of the
    type its last event says; a whole stream, one whose client left and one the drain ended
    are not."""

    async def main() -> dict[str, dict[str, float]]:
        counted: dict[str, dict[str, float]] = {}
        async with started(config) as app:
            observer = app.state["klawd"].meter.observer
            assert observer is not None
            metrics = observer.metrics
            for model, end in [*STREAM_ENDS, ("openai/rate-limit-event", "")]:
                before = parse(metrics.exposition().decode())
                await app.chat(model, end, route)
                await settled()
                after = parse(metrics.exposition().decode())
                counted[f"{model} {end}".strip()] = {
                    kind: total(after, BODY_ERRORS, type=kind)
                    - total(before, BODY_ERRORS, type=kind)
                    for kind in TYPES
                    if total(after, BODY_ERRORS, type=kind) != total(before, BODY_ERRORS, type=kind)
                }
        return counted

    counted = uvloop.run(within(main(), 30))
    assert counted == {
        "openai/gpt-fake": {},
        "openai/hold-fake leave": {},
        "openai/hold-fake drain": {},
        "openai/cut-fake": {"bad_gateway": 1},
        "openai/error-event": {"service_unavailable": 1},
        "slowai/stall-stream": {"gateway_timeout": 1},
        # not counted against its circuit (the next calls' 429s rest it), but a failed answer
        "openai/rate-limit-event": {"rate_limit_exceeded": 1},
    }
