"""A Replicate prediction the gateway stops waiting for is cancelled, whatever stopped it: it
would otherwise run on at Replicate, billed, for an answer nobody reads. The provider against
the fake predictions API; `close` waits for the cancels it sent in tasks of their own."""

from __future__ import annotations

import pytest

from gateway.errors import ServiceUnavailable
from gateway.providers import replicate
from gateway.providers.base import ImageCall
from gateway.providers.replicate import ReplicateProvider
from gateway.routing.catalog import CatalogEntry, Secret
from gateway.schemas.images import decode_image_request
from gateway.settings import ModelSettings, ProviderSettings, RetrySettings
from tests.fakes.provider_config import REPLICATE_TOKEN
from tests.fakes.replicate_upstream import FakeReplicate


def image_call(settings: ProviderSettings, upstream_model: str) -> ImageCall:
    model = ModelSettings(id="r/img", provider="r", upstream_model=upstream_model, kind="image")
    request = decode_image_request(b'{"model":"r/img","prompt":"x"}')
    return ImageCall(request, b"{}", CatalogEntry(model, settings, None), 0)


@pytest.mark.parametrize("poll_retries", [None, 0, 1], ids=["default", "none", "one"])
async def test_a_prediction_whose_poll_fails_is_cancelled(
    fake_replicate: FakeReplicate, monkeypatch: pytest.MonkeyPatch, poll_retries: int | None
) -> None:
    """Every poll answered 500: polled again the retry policy's `poll_retries` times in a row
    (3 by default; build_state gives the provider its policy's), then given up: the prediction
    cancelled and the 500's error the client's."""
    monkeypatch.setattr(replicate, "POLL_FIRST_S", 0.01)
    settings = ProviderSettings(kind="replicate", base_url=fake_replicate.base_url)
    provider = ReplicateProvider("r", settings, Secret(REPLICATE_TOKEN))
    # a short backoff (the retry policy's, as build_state gives it)
    quick = RetrySettings(base_delay_s=0.01, max_delay_s=0.02)
    if poll_retries is not None:
        quick = RetrySettings(base_delay_s=0.01, max_delay_s=0.02, poll_retries=poll_retries)
    provider.retry_policy = quick
    known = set(fake_replicate.predictions)
    try:
        with pytest.raises(ServiceUnavailable):  # the poll's 500, as the client gets it
            await provider.generate_images(image_call(settings, "fake-owner/poll-fails"))
    finally:
        await provider.close()  # (waits for the cancel's task)
    (created,) = set(fake_replicate.predictions) - known
    # polled again after each transient failure, `poll_retries` times, then given up
    expected = RetrySettings().poll_retries if poll_retries is None else poll_retries
    assert fake_replicate.polls[created] == 1 + expected
    cancels = [
        r for r in fake_replicate.requests if r["path"] == f"/v1/predictions/{created}/cancel"
    ]
    assert [r["method"] for r in cancels] == ["POST"]
    assert fake_replicate.predictions[created]["status"] == "canceled"
