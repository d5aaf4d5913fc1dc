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
from gateway.settings import ModelSettings, ProviderSettings
from tests.fakes.provider_config import REPLICATE_TOKEN
from tests.fakes.replicate_upstream import FakeReplicate


def image_call(settings: ProviderSettings, upstream_model: str) -> ImageCall:
    model = ModelSettings(id="r/img", provider="r", upstream_model=upstream_model, kind="image")
    request = decode_image_request(b'{"model":"r/img","prompt":"x"}')
    return ImageCall(request, b"{}", CatalogEntry(model, settings, None), 0)


async def test_a_prediction_whose_poll_fails_is_cancelled(
    fake_replicate: FakeReplicate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replicate, "POLL_FIRST_S", 0.01)
    settings = ProviderSettings(kind="replicate", base_url=fake_replicate.base_url)
    provider = ReplicateProvider("r", settings, Secret(REPLICATE_TOKEN))
    known = set(fake_replicate.predictions)
    try:
        with pytest.raises(ServiceUnavailable):  # the poll's 500, as the client gets it
            await provider.generate_images(image_call(settings, "fake-owner/poll-fails"))
    finally:
        await provider.close()  # (waits for the cancel's task)
    (created,) = set(fake_replicate.predictions) - known
    # polled again after each transient failure, POLL_RETRIES times, then given up
    assert fake_replicate.polls[created] == 1 + replicate.POLL_RETRIES
    cancels = [
        r for r in fake_replicate.requests if r["path"] == f"/v1/predictions/{created}/cancel"
    ]
    assert [r["method"] for r in cancels] == ["POST"]
    assert fake_replicate.predictions[created]["status"] == "canceled"
