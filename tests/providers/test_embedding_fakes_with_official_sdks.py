"""The fakes' embedding endpoints, proven with the official SDKs before the gateway's embedding
tests trust them: the openai SDK's `embeddings.create` (floats, its default base64 decoding,
token arrays) and google-genai's `embed_content` (which calls `:batchEmbedContents`)."""

from __future__ import annotations

import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tests.fakes.gemini_upstream import FakeGemini, embedding_values
from tests.fakes.openai_upstream import FakeOpenAI, embedding_vector


def openai_client(fake: FakeOpenAI) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-test", base_url=f"{fake.base_url}", max_retries=0)


def test_openai_sdk_reads_float_embeddings_of_a_batch(fake_openai: FakeOpenAI) -> None:
    result = openai_client(fake_openai).embeddings.create(
        model="embed-fake", input=["one two", "three"], encoding_format="float", dimensions=4
    )
    assert [d.embedding for d in result.data] == [embedding_vector(0, 4), embedding_vector(1, 4)]
    assert [d.index for d in result.data] == [0, 1]
    assert result.usage.prompt_tokens == 3


def test_openai_sdk_decodes_base64_embeddings(fake_openai: FakeOpenAI) -> None:
    # Without encoding_format the SDK asks for base64 and decodes it to floats itself.
    result = openai_client(fake_openai).embeddings.create(model="embed-fake", input="hello")
    assert fake_openai.last_request("embed-fake")["body"]["encoding_format"] == "base64"
    assert result.data[0].embedding == embedding_vector(0, 8)


def test_openai_sdk_sends_token_arrays(fake_openai: FakeOpenAI) -> None:
    result = openai_client(fake_openai).embeddings.create(
        model="embed-fake", input=[[1, 2, 3], [4]], encoding_format="float"
    )
    assert len(result.data) == 2
    assert result.usage.prompt_tokens == 4


def test_openai_sdk_sees_the_fake_rate_limit(fake_openai: FakeOpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        openai_client(fake_openai).embeddings.create(model="fail-429", input="x")


def gemini(fake: FakeGemini) -> genai.Client:
    return genai.Client(
        api_key="AIza-test",
        http_options=genai_types.HttpOptions(
            base_url=fake.base_url,
            api_version="v1beta",
            retry_options=genai_types.HttpRetryOptions(attempts=1),
        ),
    )


def test_genai_sdk_embeds_a_batch_through_batch_embed_contents(fake_gemini: FakeGemini) -> None:
    client = gemini(fake_gemini)
    try:
        # One Content per text (a list of strings would be one Content of two parts).
        result = client.models.embed_content(
            model="gemini-embed",
            contents=[
                genai_types.Content(parts=[genai_types.Part(text="first text")]),
                genai_types.Content(parts=[genai_types.Part(text="second")]),
            ],
            config=genai_types.EmbedContentConfig(output_dimensionality=3),
        )
    finally:
        client.close()
    assert result.embeddings is not None
    assert [e.values for e in result.embeddings] == [embedding_values(0, 3), embedding_values(1, 3)]
    recorded = fake_gemini.last_request("gemini-embed")
    assert recorded["method"] == "batchEmbedContents"
    assert recorded["body"]["requests"][0]["model"] == "models/gemini-embed"


def test_genai_sdk_sees_the_fake_embedding_error(fake_gemini: FakeGemini) -> None:
    client = gemini(fake_gemini)
    try:
        with pytest.raises(genai_errors.ClientError, match="RESOURCE_EXHAUSTED"):
            client.models.embed_content(model="gemini-exhausted", contents="x")
    finally:
        client.close()
