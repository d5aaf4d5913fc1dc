"""Image requests: the body schema, the Replicate input mapping, and the no-retry rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson
import pytest

from gateway.api.images import _generate_attempt
from gateway.errors import BadGateway, GatewayTimeout, InvalidRequest, ServiceUnavailable
from gateway.providers.base import (
    GeneratedImage,
    ImageCall,
    ImageResult,
    UpstreamUnreachable,
)
from gateway.providers.replicate import ReplicateProvider, output_urls, prediction_input
from gateway.routing.catalog import CatalogEntry, Secret
from gateway.routing.health import Health
from gateway.routing.retry import Attempt, Retrier, never_sent
from gateway.schemas.images import decode_image_request
from gateway.settings import ModelSettings, ProviderSettings, RetrySettings, Settings


def test_size_becomes_width_and_height_and_n_num_outputs() -> None:
    request = decode_image_request(b'{"model":"m/x","prompt":"p","size":"640x480","n":3}')
    assert prediction_input("someone/sdxl", request) == {
        "prompt": "p",
        "width": 640,
        "height": 480,
        "num_outputs": 3,
    }


def test_defaults_send_only_the_prompt() -> None:
    request = decode_image_request(b'{"model":"m/x","prompt":"p","size":"auto"}')
    assert prediction_input("someone/sdxl", request) == {"prompt": "p"}


@pytest.mark.parametrize(
    ("model", "body", "expected"),
    [
        ("bytedance/seedream-4.5", {}, {"prompt": "p"}),
        (
            "bytedance/seedream-4.5",
            {"size": "2048x2048"},
            {"prompt": "p", "size": "2K", "aspect_ratio": "1:1"},
        ),
        (
            "bytedance/seedream-4",
            {"size": "1024x2048"},
            {"prompt": "p", "size": "custom", "width": 1024, "height": 2048},
        ),
        (
            "bytedance/seedream-4.5",
            {"n": 4},
            {"prompt": "p", "sequential_image_generation": "auto", "max_images": 4},
        ),
        (
            "bytedance/seedream-4",
            {"n": 10, "size": "2048x2048"},
            {
                "prompt": "p",
                "size": "custom",
                "width": 2048,
                "height": 2048,
                "sequential_image_generation": "auto",
                "max_images": 10,
            },
        ),
        ("bytedance/seedream-4.5", {"n": 1}, {"prompt": "p"}),
    ],
)
def test_known_models_get_their_published_input_schema(
    model: str, body: dict[str, Any], expected: dict[str, Any]
) -> None:
    request = decode_image_request(orjson.dumps({"model": "r/x", "prompt": "p"} | body))
    assert prediction_input(model, request) == expected


@pytest.mark.parametrize(
    ("model", "body", "param"),
    [
        ("bytedance/seedream-4.5", {"size": "1024x1024"}, "size"),
        ("bytedance/seedream-4", {"size": "512x512"}, "size"),
    ],
)
def test_what_a_known_model_cannot_do_is_400_naming_it(
    model: str, body: dict[str, Any], param: str
) -> None:
    request = decode_image_request(orjson.dumps({"model": "r/x", "prompt": "p"} | body))
    with pytest.raises(InvalidRequest) as caught:
        prediction_input(model, request)
    assert caught.value.param == param


@pytest.mark.parametrize("size", ["1024", "10x", "x10", "0x10", "1024X1024", "big"])
def test_malformed_size_is_400_naming_it(size: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_image_request(b'{"model":"m/x","prompt":"p","size":"' + size.encode() + b'"}')
    assert caught.value.param == "size"


@pytest.mark.parametrize(
    ("output", "urls"), [("https://a/1.png", ["https://a/1.png"]), (["u1", "u2"], ["u1", "u2"])]
)
def test_output_url_or_list_becomes_a_list(output: Any, urls: list[str]) -> None:
    assert output_urls(output) == urls


@pytest.mark.parametrize("output", [None, 3, [1, 2], {"url": "x"}])
def test_output_without_urls_is_bad_gateway(output: Any) -> None:
    with pytest.raises(BadGateway):
        output_urls(output)


async def test_create_request_targets_the_model_predictions_with_prefer_wait() -> None:
    settings = ProviderSettings(
        kind="replicate", base_url="https://r.example/", first_byte_timeout_s=30
    )
    provider = ReplicateProvider("replicate", settings, Secret("r8_x"))
    try:
        call = ImageCall(
            decode_image_request(b'{"model":"replicate/s","prompt":"p"}'),
            b"{}",
            CatalogEntry(
                ModelSettings(id="replicate/s", provider="replicate", upstream_model="own/name"),
                settings,
                None,
            ),
            0,
        )
        upstream = provider.create_request(call)
        bad = ImageCall(
            call.request,
            b"{}",
            CatalogEntry(
                ModelSettings(id="replicate/s", provider="replicate", upstream_model="nameonly"),
                settings,
                None,
            ),
            0,
        )
        with pytest.raises(BadGateway):
            provider.create_request(bad)
    finally:
        await provider.close()
    assert upstream.url == "https://r.example/v1/models/own/name/predictions"
    assert upstream.headers["prefer"] == "wait=29"
    assert upstream.headers["authorization"] == "Bearer r8_x"
    # An image is a non-streamed answer: its own bound, when set, is the wait's.
    waiting = ReplicateProvider(
        "replicate", msgspec.structs.replace(settings, answer_timeout_s=20), None
    )
    try:
        assert waiting.create_request(call).headers["prefer"] == "wait=19"
    finally:
        await waiting.close()


@dataclass
class ScriptedImages:
    """An ImageProvider that raises the scripted errors, then succeeds."""

    errors: list[Exception]
    name: str = "p"
    calls: int = 0

    async def generate_images(self, call: ImageCall) -> ImageResult:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return ImageResult([GeneratedImage(url="https://x/1.png")])


@dataclass
class FakeState:
    providers: dict[str, Any]
    settings: Settings = field(
        default_factory=lambda: Settings(
            retry=RetrySettings(attempts=3, base_delay_s=0.0, max_delay_s=0.0),
            providers={"p": ProviderSettings(kind="replicate", base_url="http://x")},
        )
    )

    @property
    def retrier(self) -> Retrier:
        async def no_sleep(_seconds: float) -> None:
            return None

        return Retrier(
            lambda t: self.settings.provider_retry(t.model.provider), Health(), sleep=no_sleep
        )


TARGET = CatalogEntry(
    ModelSettings(id="p/img", provider="p", kind="image"),
    ProviderSettings(kind="replicate", base_url="http://x"),
    None,
)
REQUEST = decode_image_request(b'{"model":"p/img","prompt":"p"}')


async def generate(state: FakeState) -> tuple[ImageResult, CatalogEntry, list[Attempt]]:
    """The image route's tries over TARGET, with its policy (`never_sent`), as `admitted_call`
    asks the retrier for them."""
    attempt = _generate_attempt(state, REQUEST, b"{}", 0)  # type: ignore[arg-type]
    return await state.retrier.call_targets([TARGET], attempt, never_sent, never_sent)


async def test_connect_errors_are_retried() -> None:
    provider = ScriptedImages([UpstreamUnreachable("down"), UpstreamUnreachable("down")])
    result, target, tries = await generate(FakeState({"p": provider}))
    assert provider.calls == 3
    assert len(tries) == 3  # (the request log's retries: two)
    assert result.images[0].url == "https://x/1.png" and target is TARGET


@pytest.mark.parametrize(
    "error",
    [
        GatewayTimeout("slow"),
        ServiceUnavailable("503 after sending"),
        BadGateway("failed"),
    ],
)
async def test_failures_after_the_request_reached_the_upstream_are_not_retried(
    error: Exception,
) -> None:
    provider = ScriptedImages([error])
    with pytest.raises(type(error)):
        await generate(FakeState({"p": provider}))
    assert provider.calls == 1


async def test_unreachable_every_time_gives_up_after_the_configured_attempts() -> None:
    provider = ScriptedImages([UpstreamUnreachable("down")] * 5)
    with pytest.raises(UpstreamUnreachable):
        await generate(FakeState({"p": provider}))
    assert provider.calls == 3
