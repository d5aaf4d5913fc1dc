"""POST /v1/embeddings end to end: the official openai SDK → the gateway process → the fake
OpenAI-compatible upstream and the fake Gemini API (batchEmbedContents)."""

from __future__ import annotations

import base64
import math
import struct

import openai
import pytest

from tests.conftest import Gateway
from tests.fakes.gemini_upstream import FakeGemini, embedding_values
from tests.fakes.openai_upstream import FakeOpenAI, embedding_vector
from tests.fakes.provider_config import EMBEDDING_PRICE_USD
from tests.integration.test_limits_and_billing import wait_for_ledger


def client(gateway: Gateway, key: str) -> openai.OpenAI:
    """(Closed as the test ends by conftest's close_sdk_clients.)"""
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0, timeout=20)


def floats(b64: str) -> list[float]:
    raw = base64.b64decode(b64)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def test_openai_batch_of_strings_as_floats_with_usage_headers_and_cost(
    gateway: Gateway, api_key: str, fake_openai: FakeOpenAI
) -> None:
    raw = client(gateway, api_key).embeddings.with_raw_response.create(
        model="openai/embed-fake",
        input=["one two three", "four"],
        encoding_format="float",
        dimensions=4,
    )
    result = raw.parse()
    assert result.model == "openai/embed-fake"
    assert [d.embedding for d in result.data] == [embedding_vector(0, 4), embedding_vector(1, 4)]
    assert [d.index for d in result.data] == [0, 1]
    assert result.usage.prompt_tokens == 4
    assert raw.headers["x-klawd-model"] == "openai/embed-fake"
    assert raw.headers["x-klawd-provider"] == "openai"
    assert raw.headers["x-ratelimit-limit-requests"]
    assert float(raw.headers["x-klawd-cost-usd"]) == pytest.approx(4 * EMBEDDING_PRICE_USD / 1e6)
    sent = fake_openai.last_request("embed-fake")["body"]
    assert sent == {
        "model": "embed-fake",
        "input": ["one two three", "four"],
        "encoding_format": "float",
        "dimensions": 4,
    }


def test_openai_base64_is_relayed_and_decoded_by_the_sdk(
    gateway: Gateway, api_key: str, fake_openai: FakeOpenAI
) -> None:
    # The SDK asks for base64 by default and decodes it; the raw body shows what was relayed.
    sdk = client(gateway, api_key)
    result = sdk.embeddings.create(model="openai/embed-fake", input="hello")
    assert result.data[0].embedding == embedding_vector(0, 8)
    body = {"model": "openai/embed-fake", "input": "hello", "encoding_format": "base64"}
    raw = gateway.post(api_key, body, "/v1/embeddings").json()
    assert floats(raw["data"][0]["embedding"]) == embedding_vector(0, 8)


def test_openai_token_arrays_pass_through(gateway: Gateway, api_key: str) -> None:
    result = client(gateway, api_key).embeddings.create(
        model="openai/embed-fake", input=[[1, 2, 3], [4, 5]], encoding_format="float"
    )
    assert len(result.data) == 2
    assert result.usage.prompt_tokens == 5


def test_gemini_batch_through_batch_embed_contents_as_floats_and_base64(
    gateway: Gateway, api_key: str, fake_gemini: FakeGemini
) -> None:
    sdk = client(gateway, api_key)
    texts = ["first text here", "second"]
    raw = sdk.embeddings.with_raw_response.create(
        model="google/gemini-embed", input=texts, encoding_format="float", dimensions=3
    )
    result = raw.parse()
    assert [d.embedding for d in result.data] == [embedding_values(0, 3), embedding_values(1, 3)]
    assert raw.headers["x-klawd-provider"] == "google"
    # Gemini reports no tokens: the gateway's estimate, 4 characters per token per text.
    estimate = sum(math.ceil(len(t) / 4) for t in texts)
    assert result.usage.prompt_tokens == estimate
    assert float(raw.headers["x-klawd-cost-usd"]) == pytest.approx(
        estimate * EMBEDDING_PRICE_USD / 1e6
    )
    recorded = fake_gemini.last_request("gemini-embed")
    assert recorded["method"] == "batchEmbedContents"
    assert recorded["headers"]["x-goog-api-key"]
    assert recorded["body"] == {
        "requests": [
            {
                "model": "models/gemini-embed",
                "outputDimensionality": 3,
                "content": {"parts": [{"text": t}]},
            }
            for t in texts
        ]
    }
    encoded = sdk.embeddings.create(model="google/gemini-embed", input="x")  # SDK: base64
    assert encoded.data[0].embedding == embedding_values(0, 8)


def test_gemini_refuses_token_arrays(gateway: Gateway, api_key: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client(gateway, api_key).embeddings.create(model="google/gemini-embed", input=[1, 2, 3])
    assert refused.value.body["param"] == "input"  # type: ignore[index]


def test_embeddings_are_billed_in_the_ledger(gateway: Gateway) -> None:
    key = gateway.new_key(plan="enterprise", credits_usd=1.0)
    sdk = client(gateway, key)
    sdk.embeddings.create(model="openai/embed-fake", input=["a b", "c"], encoding_format="float")
    view = wait_for_ledger(gateway, key, 1)
    assert view["usage_today"]["requests"] == 1
    assert view["usage_today"]["prompt_tokens"] == 3
    assert view["usage_today"]["completion_tokens"] == 0


def test_embeddings_count_against_request_limits(gateway: Gateway) -> None:
    key = gateway.new_key(plan="free")
    sdk = client(gateway, key)
    with pytest.raises(openai.RateLimitError) as limited:
        for _ in range(20):
            sdk.embeddings.create(model="openai/embed-fake", input="x", encoding_format="float")
    assert int(limited.value.response.headers["retry-after"]) >= 1


def test_embedding_errors(gateway: Gateway, api_key: str) -> None:
    sdk = client(gateway, api_key)
    with pytest.raises(openai.BadRequestError) as not_embedding:
        sdk.embeddings.create(model="openai/gpt-fake", input="x")
    assert not_embedding.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        sdk.embeddings.create(model="openai/no-such-embedder", input="x")
    with pytest.raises(openai.BadRequestError) as empty:
        sdk.embeddings.create(model="openai/embed-fake", input=[])
    assert empty.value.body["param"] == "input"  # type: ignore[index]
    with pytest.raises(openai.RateLimitError) as upstream_limited:
        sdk.embeddings.create(model="openai/embed-429", input="x")
    assert upstream_limited.value.response.headers["retry-after"] == "7"
    with pytest.raises(openai.BadRequestError):
        sdk.embeddings.create(model="google/embed-invalid", input="x")
    with pytest.raises(openai.AuthenticationError):
        client(gateway, "sk-klawd-nope").embeddings.create(model="openai/embed-fake", input="x")


def test_catalog_lists_the_builtin_embedding_models(gateway: Gateway, api_key: str) -> None:
    models = {m.id: m for m in client(gateway, api_key).models.list()}
    for model_id, price in [
        ("openai/text-embedding-3-small", 0.02),
        ("google/gemini-embedding-001", 0.15),
    ]:
        described = models[model_id].model_dump()
        assert described["kind"] == "embedding"
        assert described["pricing"]["input"] == price


def test_a_provider_that_cannot_embed_is_a_503_or_its_fallback(
    gateway: Gateway, api_key: str
) -> None:
    alone = gateway.post(api_key, {"model": "anthropic/embed-none", "input": "x"}, "/v1/embeddings")
    assert alone.status_code == 503
    assert alone.json()["error"] == {
        "message": "The provider 'anthropic' cannot embed.",
        "type": "service_unavailable",
    }
    # Nothing was sent: the model's fallback serves the request.
    served = client(gateway, api_key).embeddings.with_raw_response.create(
        model="anthropic/embed-falls", input="x", encoding_format="float", dimensions=4
    )
    assert served.parse().data[0].embedding == embedding_vector(0, 4)
    assert served.headers["x-klawd-model"] == "openai/embed-fake"
