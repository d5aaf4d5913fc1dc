"""Image generation's answers that fail after their headers, counted as /metrics gives them:
a Replicate poll's body, and the download of generated images (`response_format: b64_json`
with URLs answered), against a loopback upstream and the real HTTP client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
import pytest

from gateway.errors import DEADLINE_EXCEEDED, BadGateway, GatewayTimeout
from gateway.metrics import Metrics
from gateway.providers import replicate
from gateway.providers.base import HttpProvider, ImageCall
from gateway.providers.openai import OpenAIProvider
from gateway.providers.replicate import ReplicateProvider
from gateway.requestlog import RequestRecord, current_request
from gateway.routing.catalog import CatalogEntry, Secret
from gateway.schemas.images import decode_image_request
from gateway.settings import ModelSettings, ProviderSettings, RetrySettings
from tests.live_bound import running_timeout
from tests.providers.test_http_client import (
    BOUND_S,
    Conn,
    Server,
    answer,
    observed,
    serving,
    upstream_counts,
)
from tests.scrape import parse, total
from tests.unit.test_retry_and_health import SONNET, Clock
from tests.unit.test_retry_deadline import DrivenWheel, retrier

IMAGES_LOST = "klawd_upstream_images_lost_total"
BROKEN = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"  # then a reset

# The answer to a path; None: BROKEN, then a reset; b"": none (until the client leaves).
Route = Callable[[Server], bytes | None]


def routed(routes: dict[str, Route], server: list[Server]) -> Callable[[Conn], object]:
    async def handler(conn: Conn) -> None:
        while (request := await conn.request()) is not None:
            path = request[0].split(b" ", 2)[1].decode()
            reply = routes[path](server[0])
            if reply is None:
                await conn.send(BROKEN)
                conn.reset()
                return
            if not reply:
                await conn.wait_closed_by_peer()
                return
            await conn.send(reply)

    return handler


def json_answer(value: object, status: str = "200 OK") -> bytes:
    return answer(orjson.dumps(value), "Content-Type: application/json", status=status)


def image_call(provider: str, kind: str, base_url: str, upstream: str, n: int = 1) -> ImageCall:
    settings = ProviderSettings(kind=kind, base_url=base_url)  # type: ignore[arg-type]
    body = orjson.dumps(
        {"model": f"{provider}/m", "prompt": "p", "n": n, "response_format": "b64_json"}
    )
    return ImageCall(
        decode_image_request(body),
        body,
        CatalogEntry(
            ModelSettings(id=f"{provider}/m", provider=provider, upstream_model=upstream),
            settings,
            None,
        ),
        0,
    )


def counts(metrics: Metrics) -> dict[str, float]:
    """The upstream calls (upstream_counts), the body errors of type bad_gateway only."""
    return upstream_counts(metrics, type="bad_gateway")


def prediction(server: Server, status: str, **fields: object) -> bytes:
    urls = {"get": server.url("/get"), "cancel": server.url("/cancel")}
    return json_answer({"id": "p1", "status": status, "urls": urls, **fields}, "201 Created")


async def test_a_replicate_poll_whose_body_breaks_is_a_body_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The create answered, its poll's headers came, the poll's body broke: one body error
    per poll (each poll breaks here: polled again `poll_retries` times, then given up)."""
    monkeypatch.setattr(replicate, "POLL_FIRST_S", 0.001)
    server: list[Server] = []
    cancels: list[str] = []

    def cancel(s: Server) -> bytes:
        cancels.append("p1")
        return json_answer({})

    routes: dict[str, Route] = {
        "/v1/models/own/name/predictions": lambda s: prediction(s, "starting"),
        "/get": lambda s: None,
        "/cancel": cancel,
    }
    async with running_timeout(BOUND_S), serving(routed(routes, server)) as up:
        server.append(up)
        settings = ProviderSettings(kind="replicate", base_url=up.url())
        provider = ReplicateProvider("rep", settings, Secret("r8"))
        provider.retry_policy = RetrySettings(base_delay_s=0.001, max_delay_s=0.002)
        metrics = observed(provider)
        try:
            with pytest.raises(BadGateway):
                await provider.generate_images(image_call("rep", "replicate", up.url(), "own/name"))
        finally:
            await provider.close()
    # answered: the create, the polls (their headers) and the prediction's cancel, sent as the
    # last poll failed (close waits for it)
    polls = 1 + provider.retry_policy.poll_retries
    assert counts(metrics) == {"answered": 2 + polls, "errors": 0, "body_errors": polls}
    assert cancels == ["p1"]
    # the prediction may or may not have made its image: nothing is counted on a guess
    assert total(parse(metrics.exposition().decode()), IMAGES_LOST) == 0


@pytest.mark.parametrize("kind", ["replicate", "openai"])
async def test_generated_images_whose_download_breaks_are_a_body_error(kind: str) -> None:
    """The generation answered whole with URLs; the client asked for b64_json, and an image's
    download broke: the generation's answer never reached the client, one body error."""
    server: list[Server] = []
    routes: dict[str, Route] = {
        "/v1/models/own/name/predictions": lambda s: prediction(
            s, "succeeded", output=[s.url("/a.png"), s.url("/b.png")]
        ),
        "/v1/images/generations": lambda s: json_answer(
            {"created": 0, "data": [{"url": s.url("/a.png")}, {"url": s.url("/b.png")}]}
        ),
        "/a.png": lambda s: answer(b"\x89PNG", "Content-Type: image/png"),
        "/b.png": lambda s: None,
    }
    async with running_timeout(BOUND_S), serving(routed(routes, server)) as up:
        server.append(up)
        base = up.url() if kind == "replicate" else up.url("/v1")
        settings = ProviderSettings(kind=kind, base_url=base)  # type: ignore[arg-type]
        provider: HttpProvider = (
            ReplicateProvider("img", settings, Secret("k"))
            if kind == "replicate"
            else OpenAIProvider("img", settings, Secret("k"))
        )
        metrics = observed(provider)
        try:
            with pytest.raises(BadGateway):
                await provider.generate_images(  # type: ignore[attr-defined]
                    image_call("img", kind, base, "own/name", n=2)
                )
        finally:
            await provider.close()
    assert counts(metrics) == {"answered": 1, "errors": 0, "body_errors": 1}
    # both images were made (and are billed upstream); the client got neither, nor paid
    samples = parse(metrics.exposition().decode())
    assert total(samples, IMAGES_LOST, provider="img", type="bad_gateway") == 2


async def test_a_download_the_request_s_deadline_cuts_is_a_body_error() -> None:
    """The deadline passes while a generated image is being fetched (made due as the upstream
    receives the download's request): the client gets the deadline's 504, and the answer the
    generation made is one body error (gateway_timeout)."""
    retrier_ = retrier(Clock(), 30)
    wheel = retrier_._cuts = DrivenWheel(asyncio.get_running_loop())  # type: ignore[assignment]
    server: list[Server] = []

    def due(s: Server) -> bytes:
        wheel.run()
        return b""  # the image never comes

    routes: dict[str, Route] = {
        "/v1/models/own/name/predictions": lambda s: prediction(
            s, "succeeded", output=[s.url("/a.png")]
        ),
        "/a.png": due,
        "/cancel": lambda s: json_answer({}),
    }
    async with running_timeout(BOUND_S), serving(routed(routes, server)) as up:
        server.append(up)
        settings = ProviderSettings(kind="replicate", base_url=up.url())
        provider = ReplicateProvider("img", settings, Secret("k"))
        metrics = observed(provider)
        call = image_call("img", "replicate", up.url(), "own/name")

        def attempt(target: CatalogEntry) -> object:
            return provider.generate_images(call)

        try:
            with pytest.raises(GatewayTimeout) as raised:
                await retrier_.call_targets([SONNET], attempt)  # type: ignore[arg-type]
            assert raised.value.code == DEADLINE_EXCEEDED
        finally:
            await provider.close()
    samples = parse(metrics.exposition().decode())
    assert total(samples, "klawd_upstream_request_duration_seconds_count") == 1
    assert total(samples, "klawd_upstream_body_errors_total", type="gateway_timeout") == 1
    assert total(samples, IMAGES_LOST, provider="img", type="gateway_timeout") == 1


@pytest.mark.parametrize("order", ["client", "deadline, client", "client, deadline"])
async def test_images_lost_to_a_client_gone_during_their_download_are_counted(order: str) -> None:
    """The client leaves (the server cancels the request's task) while a generated image is
    being fetched, alone or in the deadline's own loop turn: the images the generation made
    (and the upstream bills) are lost, counted with the type `client_closed`, and on the
    request's log line; no upstream failure is counted (the upstream answered, and served)."""
    loop = asyncio.get_running_loop()
    retrier_ = retrier(Clock(), 30)
    wheel = retrier_._cuts = DrivenWheel(loop)  # type: ignore[assignment]
    server: list[Server] = []
    request: list[asyncio.Task[object]] = []

    def leave(s: Server) -> bytes:
        for step in order.split(", "):
            if step == "deadline":
                wheel.run()  # the cut is queued for the loop's next turn ...
            else:
                loop.call_soon(request[0].cancel)  # ... the client's leaving in that turn
        return b""  # the image never comes

    routes: dict[str, Route] = {
        "/v1/models/own/name/predictions": lambda s: prediction(
            s, "succeeded", output=[s.url("/a.png"), s.url("/b.png")]
        ),
        "/a.png": leave,
        "/cancel": lambda s: json_answer({}),
    }
    record = RequestRecord("req_images_lost", "POST")
    async with running_timeout(BOUND_S), serving(routed(routes, server)) as up:
        server.append(up)
        settings = ProviderSettings(kind="replicate", base_url=up.url())
        provider = ReplicateProvider("img", settings, Secret("k"))
        metrics = observed(provider)
        call = image_call("img", "replicate", up.url(), "own/name", n=2)

        def attempt(target: CatalogEntry) -> object:
            return provider.generate_images(call)

        async def served() -> object:
            current_request.set(record)  # (this task's context: the request's)
            return await retrier_.call_targets([SONNET], attempt)  # type: ignore[arg-type]

        try:
            request.append(asyncio.ensure_future(served()))
            with pytest.raises(asyncio.CancelledError):
                await request[0]
        finally:
            await provider.close()
    samples = parse(metrics.exposition().decode())
    assert total(samples, IMAGES_LOST, provider="img", type="client_closed") == 2
    assert total(samples, IMAGES_LOST, type="gateway_timeout") == 0
    assert counts(metrics) == {"answered": 1, "errors": 0, "body_errors": 0}
    assert total(samples, "klawd_upstream_body_errors_total") == 0
    line = orjson.loads(record.line(1.0, None))
    assert line["images_lost"] == 2
    assert "upstream_body_error" not in line
