"""Chat, Messages, Responses and images run their upstream call through one function
(gateway/pending_admission.py, `admitted_call`): under a decided admission (the embedded
store's, or a Redis one admitted from the worker's lease) with no context manager around it
(issue 19zzzzzk; images since 19zzzzzm), and a failed call settled at no cost, as what it asked
for (a stream or not), with the admission's headers on its error. Both stores; the app in
process as Granian drives it (tests/integration/test_streams_freed.py's `App`), the ledger
entries as the meter records them."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvloop

from gateway.pending_admission import DecidedAdmission
from gateway.store.base import UsageEntry
from tests.conftest import free_port, gateway_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.integration.test_streams_freed import App, started
from tests.live_bound import within
from tests.redis_server import RedisServer

ROUTES = {
    "chat": "/v1/chat/completions",
    "messages": "/v1/messages",
    "responses": "/v1/responses",
    "images": "/v1/images/generations",
}
# What each route asks, served and failing before the first byte: the image model's upstream
# refuses every connection (retried, as images are only then, and failing: 503).
SERVED = {"images": "openai/img-fake"}
FAILING = {"images": "unreachable/img-fake"}
# (route, stream): images are never streamed
CALLS = [
    pytest.param(route, stream, id=f"{route}-{'stream' if stream else 'answer'}")
    for route in ROUTES
    for stream in ([False] if route == "images" else [False, True])
]
IMAGE_MODELS = """
[[models]]
id = "openai/img-fake"
provider = "openai"
upstream_model = "img-fake"
kind = "image"
usd_per_image = 0.01

[providers.unreachable]
kind = "openai"
base_url = "http://127.0.0.1:{port}/v1"
api_key_env = "OPENAI_API_KEY"

[[models]]
id = "unreachable/img-fake"
provider = "unreachable"
upstream_model = "img-fake"
kind = "image"
usd_per_image = 0.01
"""
NUMBERS = itertools.count()
# Requests until one is admitted from the worker's lease (Redis; the embedded store decides
# every admission): a lease is taken a few admissions in.
TRIES = 64


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def config(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fake_openai: FakeOpenAI,
) -> Iterator[Path]:
    store_url = None
    if request.param == "redis":
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        store_url = redis_server.url
    path = tmp_path_factory.mktemp(f"admitted-{request.param}") / "klawd.toml"
    # (a free port nothing listens on: every connection refused)
    extra = IMAGE_MODELS.format(port=free_port())
    gateway_config(path, free_port(), fake_openai.base_url, extra, store_url=store_url)
    yield path


def body(route: str, model: str, stream: bool) -> bytes:
    if route == "images":
        return orjson.dumps({"model": model, "prompt": "a red fox"})
    request: dict[str, Any] = {"model": model, "stream": stream}
    if route == "responses":
        request["input"] = "hi"
    else:
        request["messages"] = [{"role": "user", "content": "hi"}]
    if route == "messages":
        request["max_tokens"] = 64
    return orjson.dumps(request)


class Admitted:
    """The app's decided admissions (by request id), the `async with` entered on any of them,
    and the ledger entries."""

    def __init__(self, app: App, monkeypatch: pytest.MonkeyPatch) -> None:
        meter = app.state["klawd"].meter
        self.decided: set[str] = set()
        self.entered = 0  # `overlapping` asked of a decided admission
        self.entries: dict[str, UsageEntry] = {}
        start, record = meter.start, meter._recorder.record
        overlapping = DecidedAdmission.overlapping

        async def started(auth: Any, request_id: str, *args: Any) -> Any:
            admitting = await start(auth, request_id, *args)
            if isinstance(admitting, DecidedAdmission):
                self.decided.add(request_id)
            return admitting

        def entering(admission: DecidedAdmission, stream: bool) -> DecidedAdmission:
            self.entered += 1
            return overlapping(admission, stream)

        def recorded(entry: UsageEntry) -> None:
            self.entries[entry.request_id] = entry
            record(entry)

        monkeypatch.setattr(meter, "start", started)
        monkeypatch.setattr(DecidedAdmission, "overlapping", entering)
        monkeypatch.setattr(meter._recorder, "record", recorded)

    async def until_decided(
        self, app: App, route: str, model: str, stream: bool
    ) -> tuple[int, dict[bytes, bytes], UsageEntry]:
        """Requests until one's admission was decided: its status, headers, ledger entry."""
        for _ in range(TRIES):
            request_id = f"req_admitted_{next(NUMBERS)}"
            status, answer = await app.request(
                ROUTES[route], body(route, model, stream), app.key, "", request_id
            )
            if request_id in self.decided:
                for _ in range(50):  # a stream's settlement, after its end
                    if request_id in self.entries:
                        return status, app.head, self.entries[request_id]
                    await asyncio.sleep(0.01)
                raise AssertionError(f"{request_id} not settled: {status} {answer[-300:]!r}")
        raise AssertionError(f"no admission decided in {TRIES} requests")


@pytest.mark.parametrize(("route", "stream"), CALLS)
def test_a_decided_admission_s_call_runs_with_no_context_manager(
    config: Path, route: str, stream: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Served under a decided admission, each route answers as before (billed, its stream
    flag) and never enters `async with admission.overlapping(...)` (before 19zzzzzk the
    Messages and Responses routes did, ~3K instructions a request; images until 19zzzzzm)."""

    async def main() -> tuple[int, dict[bytes, bytes], UsageEntry, int]:
        async with started(config) as app:
            admitted = Admitted(app, monkeypatch)
            model = SERVED.get(route, "openai/gpt-fake")
            served = await admitted.until_decided(app, route, model, stream)
            return (*served, admitted.entered)

    status, head, entry, entered = uvloop.run(within(main(), 60))
    assert status == 200
    assert entered == 0, "the decided admission's `async with` entered"
    assert (entry.status, entry.stream) == (200, stream)
    assert entry.cost_micros > 0
    assert b"x-ratelimit-remaining-requests" in head


@pytest.mark.parametrize(("route", "stream"), CALLS)
def test_a_failed_call_under_a_decided_admission_is_settled_at_no_cost(
    config: Path, route: str, stream: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upstream fails before the first byte (500 on every try; images: every connection
    refused, the one failure they are retried after): the route answers 503
    with the admission's rate headers, and the request is settled at no cost (its
    reservation released) as what it asked for, the ledger's status the answer's."""

    async def main() -> tuple[int, dict[bytes, bytes], UsageEntry, int]:
        async with started(config) as app:
            admitted = Admitted(app, monkeypatch)
            model = FAILING.get(route, "openai/fail-500")
            served = await admitted.until_decided(app, route, model, stream)
            return (*served, admitted.entered)

    status, head, entry, entered = uvloop.run(within(main(), 60))
    assert status == 503
    assert entered == 0
    assert (entry.status, entry.stream, entry.cost_micros) == (503, stream, 0)
    assert entry.reserved_micros > 0, "a reservation made, and released"
    assert b"x-ratelimit-limit-requests" in head
