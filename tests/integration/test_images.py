"""Image generation end to end: the official openai SDK's `images.generate` → the gateway
process → the fake Replicate predictions API or the fake OpenAI images endpoint."""

from __future__ import annotations

import base64

import httpx
import openai
import pytest

from tests.conftest import Gateway
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.provider_config import REPLICATE_TOKEN
from tests.fakes.replicate_upstream import FakeReplicate
from tests.fakes.server import PNG_1X1
from tests.live_bound import polls

BOUND_S = 30  # a polling wait's hang guard, in running time (never a timing assertion)

IMAGES = "/v1/images/generations"


def client(gateway: Gateway, key: str) -> openai.OpenAI:
    """(Closed as the test ends by conftest's close_sdk_clients.)"""
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0, timeout=30)


def test_replicate_urls_with_cost_and_translated_input(
    gateway: Gateway, api_key: str, fake_replicate: FakeReplicate
) -> None:
    response = client(gateway, api_key).images.with_raw_response.generate(
        model="replicate/instant", prompt="a red fox", n=2, size="512x768"
    )
    images = response.parse()
    assert images.data is not None and len(images.data) == 2
    assert all((i.url or "").startswith(fake_replicate.base_url) for i in images.data)
    assert images.created > 0
    assert response.headers["x-klawd-model"] == "replicate/instant"
    assert response.headers["x-klawd-provider"] == "replicate"
    assert response.headers["x-klawd-cost-usd"] == "0.040000"  # 2 images x $0.02
    created = fake_replicate.creations("instant")[-1]
    assert created["path"] == "/v1/models/fake-owner/instant/predictions"
    assert created["body"] == {
        "input": {"prompt": "a red fox", "width": 512, "height": 768, "num_outputs": 2}
    }
    assert created["headers"]["Prefer"].startswith("wait")
    assert created["headers"]["Authorization"] == f"Bearer {REPLICATE_TOKEN}"


def test_replicate_b64_json_holds_the_downloaded_image(gateway: Gateway, api_key: str) -> None:
    images = client(gateway, api_key).images.generate(
        model="replicate/instant", prompt="a red fox", response_format="b64_json"
    )
    assert images.data is not None and len(images.data) == 1
    assert images.data[0].url is None
    assert base64.b64decode(images.data[0].b64_json or "") == PNG_1X1


def test_replicate_inline_images_are_given_as_they_came(gateway: Gateway, api_key: str) -> None:
    """Outputs answered inline (`data:` URIs): b64_json is their own base64 (before: a 502, the
    gateway tried to download a data URI), a url answer relays them as URLs."""
    sdk = client(gateway, api_key)
    images = sdk.images.generate(
        model="replicate/inline", prompt="x", n=2, response_format="b64_json"
    )
    assert images.data is not None and len(images.data) == 2
    assert all(base64.b64decode(i.b64_json or "") == PNG_1X1 for i in images.data)
    images = sdk.images.generate(model="replicate/inline", prompt="x")
    assert images.data is not None
    assert (images.data[0].url or "").startswith("data:image/png;base64,")


def test_replicate_empty_output_is_a_502_not_an_empty_answer(
    gateway: Gateway, api_key: str
) -> None:
    """A prediction that succeeded with no image: before, a 200 with `data: []`."""
    with pytest.raises(openai.APIStatusError) as caught:
        client(gateway, api_key).images.generate(model="replicate/empty", prompt="x")
    assert caught.value.status_code == 502
    assert "without image URLs" in caught.value.message


def test_replicate_single_url_output_is_one_image(gateway: Gateway, api_key: str) -> None:
    images = client(gateway, api_key).images.generate(model="replicate/single", prompt="x")
    assert images.data is not None and len(images.data) == 1
    assert (images.data[0].url or "").endswith("/out-0.png")


def test_replicate_prediction_still_running_is_polled_until_succeeded(
    gateway: Gateway, api_key: str, fake_replicate: FakeReplicate
) -> None:
    images = client(gateway, api_key).images.generate(model="replicate/slow", prompt="x")
    assert images.data is not None and len(images.data) == 1
    prediction_id = (images.data[0].url or "").split("/files/")[1].split("/")[0]
    assert fake_replicate.polls[prediction_id] == 3
    polled = [r for r in fake_replicate.requests if r["path"] == f"/v1/predictions/{prediction_id}"]
    assert all(r["method"] == "GET" for r in polled)
    assert polled[0]["headers"]["Authorization"] == f"Bearer {REPLICATE_TOKEN}"


@pytest.mark.parametrize(
    ("model", "status", "error_type"),
    [
        ("fails", 502, "bad_gateway"),
        ("canceled", 503, "service_unavailable"),
        ("rate-limited", 429, "rate_limit_exceeded"),
        ("invalid", 400, "invalid_request"),
    ],
)
def test_replicate_failures_map_to_the_envelope(
    gateway: Gateway, api_key: str, model: str, status: int, error_type: str
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client(gateway, api_key).images.generate(model=f"replicate/{model}", prompt="x")
    assert caught.value.status_code == status
    assert caught.value.body["type"] == error_type  # type: ignore[index]
    assert REPLICATE_TOKEN not in caught.value.response.text


def test_failed_prediction_names_the_model_error(gateway: Gateway, api_key: str) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client(gateway, api_key).images.generate(model="replicate/fails", prompt="x")
    assert "CUDA out of memory" in caught.value.message


def test_rate_limited_create_carries_retry_after(gateway: Gateway, api_key: str) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client(gateway, api_key).images.generate(model="replicate/rate-limited~again", prompt="x")
    assert caught.value.response.headers["retry-after"] == "9"


def test_failed_generation_is_not_retried(
    gateway: Gateway, api_key: str, fake_replicate: FakeReplicate
) -> None:
    before = len(fake_replicate.creations("canceled"))
    with pytest.raises(openai.APIStatusError):
        client(gateway, api_key).images.generate(model="replicate/canceled", prompt="x")
    assert len(fake_replicate.creations("canceled")) == before + 1


def test_prediction_past_the_deadline_is_cancelled_and_504(
    gateway: Gateway, api_key: str, fake_replicate: FakeReplicate
) -> None:
    # The fake is the session's: other modules' tests (test_request_deadline.py) create `never`
    # predictions and cancel them too. Only this test's own are counted.
    before = len(fake_replicate.creations("never"))
    known = set(fake_replicate.predictions)
    with pytest.raises(openai.APIStatusError) as caught:
        client(gateway, api_key).images.generate(model="replicate-deadline/never", prompt="x")
    assert caught.value.status_code == 504
    assert caught.value.body["type"] == "gateway_timeout"  # type: ignore[index]
    assert len(fake_replicate.creations("never")) == before + 1, (
        "a timed-out generation is not retried"
    )
    (created,) = set(fake_replicate.predictions) - known
    cancels = [
        r for r in fake_replicate.requests if r["path"] == f"/v1/predictions/{created}/cancel"
    ]
    assert [r["method"] for r in cancels] == ["POST"]  # sent before the 504, not after it
    assert fake_replicate.predictions[created]["status"] == "canceled"


def test_free_plan_gets_403_and_nothing_reaches_the_upstream(
    gateway: Gateway, fake_replicate: FakeReplicate
) -> None:
    free_key = gateway.new_key(plan="free", credits_usd=5.0)
    before = len(fake_replicate.requests)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client(gateway, free_key).images.generate(model="replicate/instant", prompt="x")
    assert caught.value.body["type"] == "permission_denied"  # type: ignore[index]
    assert len(fake_replicate.requests) == before


def test_api_path_alias_serves_the_same_endpoint(gateway: Gateway, api_key: str) -> None:
    body = {"model": "replicate/instant", "prompt": "x"}
    response = gateway.post(api_key, body, "/api/images/generations", timeout=30)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"created", "data"}
    assert list(body["data"][0]) == ["url"]


@pytest.mark.parametrize("response_format", ["url", "b64_json"])
def test_openai_image_model(
    gateway: Gateway, api_key: str, fake_openai: FakeOpenAI, response_format: str
) -> None:
    response = client(gateway, api_key).images.with_raw_response.generate(
        model="openai/img-fake",
        prompt="a lighthouse",
        n=2,
        response_format=response_format,  # type: ignore[arg-type]
        extra_body={"quality": "hd"},
    )
    images = response.parse()
    assert images.data is not None and len(images.data) == 2
    if response_format == "url":
        assert (images.data[0].url or "").endswith("/files/img-0.png")
    else:
        assert base64.b64decode(images.data[0].b64_json or "") == PNG_1X1
    assert response.headers["x-klawd-cost-usd"] == "0.080000"
    assert response.headers["x-klawd-provider"] == "openai"
    body = fake_openai.last_request("img-fake")["body"]
    assert body["prompt"] == "a lighthouse" and body["quality"] == "hd" and body["n"] == 2


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "openai/gpt-fake", "prompt": "x"}, 400, "model"),
        ({"model": "replicate/instant"}, 400, "prompt"),
        ({"model": "replicate/instant", "prompt": "x", "n": 0}, 400, "n"),
        ({"model": "replicate/instant", "prompt": "x", "size": "big"}, 400, "size"),
        ({"model": "replicate/instant", "prompt": "x", "response_format": "png"}, 400, None),
        ({"model": "nope/nothing", "prompt": "x"}, 404, "model"),
    ],
)
def test_invalid_image_requests(
    gateway: Gateway, api_key: str, body: dict[str, object], status: int, param: str | None
) -> None:
    response = gateway.post(api_key, body, IMAGES)
    assert response.status_code == status
    if param is not None:
        assert response.json()["error"]["param"] == param


def test_image_model_is_not_a_chat_model_and_back(gateway: Gateway, api_key: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(gateway, api_key).chat.completions.create(
            model="replicate/instant", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.param == "model"
    with pytest.raises(openai.BadRequestError):
        client(gateway, api_key).chat.completions.create(
            model="replicate/not-chat", messages=[{"role": "user", "content": "hi"}]
        )


def test_images_need_a_key(gateway: Gateway) -> None:
    response = httpx.post(
        f"{gateway.base_url}/v1/images/generations",
        json={"model": "replicate/instant", "prompt": "x"},
    )
    assert response.status_code == 401


def test_builtin_seedream_gets_its_own_input_schema(
    gateway: Gateway, api_key: str, fake_replicate: FakeReplicate
) -> None:
    response = client(gateway, api_key).images.with_raw_response.generate(
        model="replicate/seedream-4.5", prompt="a harbour", size="2048x2048"
    )
    images = response.parse()
    assert images.data is not None and len(images.data) == 1
    assert response.headers["x-klawd-cost-usd"] == "0.020000"
    created = fake_replicate.creations("seedream-4.5")[-1]
    assert created["path"] == "/v1/models/bytedance/seedream-4.5/predictions"
    assert created["body"] == {
        "input": {"prompt": "a harbour", "size": "2K", "aspect_ratio": "1:1"}
    }


def test_seedream_n_becomes_group_generation_and_the_answer_holds_every_image(
    gateway: Gateway, api_key: str, fake_replicate: FakeReplicate
) -> None:
    response = client(gateway, api_key).images.with_raw_response.generate(
        model="replicate/seedream-4.5", prompt="a harbour at dawn, three views", n=3
    )
    images = response.parse()
    assert images.data is not None and len(images.data) == 3
    assert len({i.url for i in images.data}) == 3
    assert response.headers["x-klawd-cost-usd"] == "0.060000"  # 3 images x $0.02
    created = fake_replicate.creations("seedream-4.5")[-1]
    assert created["body"] == {
        "input": {
            "prompt": "a harbour at dawn, three views",
            "sequential_image_generation": "auto",
            "max_images": 3,
        }
    }


def test_seedream_bill_counts_the_images_returned_not_requested(gateway: Gateway) -> None:
    key = gateway.new_key(plan="pro", credits_usd=1.0)
    response = client(gateway, key).images.with_raw_response.generate(
        model="replicate/seedream-4.5", prompt="a lone lighthouse [one image]", n=4
    )
    images = response.parse()
    assert images.data is not None and len(images.data) == 1
    assert response.headers["x-klawd-cost-usd"] == "0.020000"
    view: dict[str, object] = {}
    for _ in polls(BOUND_S, 0.05):  # the ledger is written after the answer
        view = httpx.get(
            f"{gateway.base_url}/v1/account", headers={"authorization": f"Bearer {key}"}
        ).json()
        if view["usage_today"]["images"] == 1:  # type: ignore[index]
            break
    assert view["usage_today"]["images"] == 1  # type: ignore[index]
    # the reservation of 4 images was settled to the 1 returned: nothing else is held
    assert view["credits_usd"] == pytest.approx(0.98)


def test_reservation_covers_n_images(gateway: Gateway) -> None:
    key = gateway.new_key(plan="pro", credits_usd=0.05)
    with pytest.raises(openai.APIStatusError) as caught:
        client(gateway, key).images.generate(model="replicate/seedream-4.5", prompt="x", n=3)
    assert caught.value.status_code == 402, "3 x $0.02 is more than $0.05"


def test_model_that_makes_one_image_refuses_n_before_calling_the_upstream(
    gateway: Gateway, api_key: str, fake_openai: FakeOpenAI
) -> None:
    before = len(fake_openai.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        client(gateway, api_key).images.generate(model="openai/img-single", prompt="x", n=2)
    assert caught.value.param == "n"
    assert "at most 1 image per request" in caught.value.message
    assert len(fake_openai.requests) == before
    one = client(gateway, api_key).images.generate(model="openai/img-single", prompt="x", n=1)
    assert one.data is not None and len(one.data) == 1


def test_images_are_limited_reserved_and_billed_per_image(gateway: Gateway) -> None:
    key = gateway.new_key(plan="pro", credits_usd=0.05)
    headers = {"authorization": f"Bearer {key}"}
    body = {"model": "replicate/instant", "prompt": "a fox", "n": 2, "size": "512x512"}
    first = httpx.post(f"{gateway.base_url}/v1/images/generations", headers=headers, json=body)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "100"
    # $0.05 - $0.04 leaves $0.01: two more images would need $0.04
    refused = httpx.post(f"{gateway.base_url}/v1/images/generations", headers=headers, json=body)
    assert refused.status_code == 402
    assert refused.json()["error"]["type"] == "insufficient_credits"
    one = httpx.post(
        f"{gateway.base_url}/v1/images/generations", headers=headers, json={**body, "n": 1}
    )
    assert one.status_code == 402, "$0.01 left cannot cover one $0.02 image either"
    view: dict[str, object] = {}
    for _ in polls(BOUND_S, 0.05):
        view = httpx.get(f"{gateway.base_url}/v1/account", headers=headers).json()
        if view["usage_today"]["images"] == 2:  # type: ignore[index]
            break
    assert view["usage_today"] == {  # type: ignore[comparison-overlap]
        "requests": 1,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "images": 2,
        "cost_usd": 0.04,
    }
    assert view["credits_usd"] == pytest.approx(0.01)


def test_a_provider_that_cannot_make_images_is_a_503_or_its_fallback(
    gateway: Gateway, api_key: str
) -> None:
    alone = gateway.post(api_key, {"model": "google/img-none", "prompt": "x"}, IMAGES)
    assert alone.status_code == 503
    assert alone.json()["error"] == {
        "message": "The provider 'google' cannot generate images.",
        "type": "service_unavailable",
    }
    # Nothing was sent: the model's fallback serves the request.
    served = client(gateway, api_key).images.with_raw_response.generate(
        model="google/img-falls", prompt="a lighthouse"
    )
    assert served.parse().data is not None
    assert served.headers["x-klawd-model"] == "openai/img-fake"
