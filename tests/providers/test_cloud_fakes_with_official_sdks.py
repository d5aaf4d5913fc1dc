"""The cloud fakes proven against each cloud's own official SDK before the gateway's tests
trust them: `openai.AzureOpenAI`, boto3's `bedrock-runtime` (converse / converse_stream),
`google-genai` with `vertexai=True` and `anthropic.AnthropicVertex`, the last two with real
service-account credentials whose JWT the fake's token endpoint verifies. Each fake also checks
auth the way its cloud does: a wrong key, signature or token is refused."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import anthropic
import boto3
import botocore.exceptions
import httpx
import openai
import orjson
import pytest
from botocore.config import Config
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from google.oauth2 import service_account

from tests.fakes import anthropic_upstream, gemini_upstream
from tests.fakes.azure_upstream import API_KEY, ENTRA_TOKEN, FakeAzure
from tests.fakes.bedrock_upstream import (
    ACCESS_KEY_ID,
    ANSWER,
    REGION,
    SECRET_ACCESS_KEY,
    SESSION_TOKEN,
    TOOL_INPUT,
    FakeBedrock,
)
from tests.fakes.openai_upstream import ANSWER_WORDS
from tests.fakes.vertex_upstream import LOCATION, PROJECT, FakeVertex

# -- Azure OpenAI --------------------------------------------------------------------------------


@pytest.fixture
def azure(fake_azure: FakeAzure) -> Iterator[openai.AzureOpenAI]:
    client = openai.AzureOpenAI(
        azure_endpoint=fake_azure.origin, api_key=API_KEY, api_version="2024-10-21", max_retries=0
    )
    yield client
    client.close()


def test_azure_sdk_parses_the_fake_completion(
    azure: openai.AzureOpenAI, fake_azure: FakeAzure
) -> None:
    answer = azure.chat.completions.create(
        model="gpt4o-prod", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content == "".join(ANSWER_WORDS)
    assert answer.usage is not None and answer.usage.total_tokens == 16
    sent = fake_azure.last(deployment="gpt4o-prod")
    assert sent["path"].endswith("?api-version=2024-10-21")
    assert sent["headers"]["api-key"] == API_KEY


def test_azure_sdk_accumulates_the_fake_stream_after_its_prompt_filter_chunk(
    azure: openai.AzureOpenAI,
) -> None:
    chunks = list(
        azure.chat.completions.create(
            model="gpt4o-prod",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices == []  # Azure's prompt_filter_results chunk
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(ANSWER_WORDS)
    assert chunks[-1].usage is not None


def test_azure_sdk_embeds_and_generates_images_from_the_fake(azure: openai.AzureOpenAI) -> None:
    embeddings = azure.embeddings.create(model="embed-prod", input=["a", "b"])
    assert [e.index for e in embeddings.data] == [0, 1]
    image = azure.images.generate(model="dalle-prod", prompt="a cat")
    assert image.data is not None and image.data[0].b64_json


def test_azure_fake_accepts_an_entra_token_and_refuses_a_wrong_key(fake_azure: FakeAzure) -> None:
    with openai.AzureOpenAI(
        azure_endpoint=fake_azure.origin,
        azure_ad_token=ENTRA_TOKEN,
        api_version="2024-10-21",
        max_retries=0,
    ) as entra:
        answer = entra.chat.completions.create(
            model="gpt4o-prod", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content
    with (
        openai.AzureOpenAI(
            azure_endpoint=fake_azure.origin,
            api_key="wrong",
            api_version="2024-10-21",
            max_retries=0,
        ) as wrong,
        pytest.raises(openai.AuthenticationError),
    ):
        wrong.chat.completions.create(
            model="gpt4o-prod", messages=[{"role": "user", "content": "hi"}]
        )


def test_azure_sdk_sees_the_fake_429_with_retry_after(azure: openai.AzureOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        azure.chat.completions.create(
            model="throttled", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.response.headers["retry-after"] == "4"


# -- Bedrock -------------------------------------------------------------------------------------


BOTO_CLIENTS: list[Any] = []


@pytest.fixture(autouse=True)
def close_boto_clients() -> Iterator[None]:
    yield
    while BOTO_CLIENTS:
        BOTO_CLIENTS.pop().close()
    gc.collect()  # a leaked connection fails this test, not a later one


def bedrock_client(fake: FakeBedrock, secret: str = SECRET_ACCESS_KEY) -> Any:
    client = boto3.client(
        "bedrock-runtime",
        region_name=REGION,
        endpoint_url=fake.origin,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=secret,
        aws_session_token=SESSION_TOKEN,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )
    BOTO_CLIENTS.append(client)
    return client


BEDROCK_MESSAGES = [{"role": "user", "content": [{"text": "hi"}]}]


def test_boto3_converse_parses_the_fake_answer(fake_bedrock: FakeBedrock) -> None:
    answer = bedrock_client(fake_bedrock).converse(
        modelId="anthropic.claude-fake-v1:0", messages=BEDROCK_MESSAGES
    )
    assert answer["output"]["message"]["content"][0]["text"] == "".join(ANSWER)
    assert answer["stopReason"] == "end_turn"
    assert answer["usage"]["totalTokens"] == 21
    # boto3 signed the request and the fake recomputed the same signature
    assert fake_bedrock.last(model="anthropic.claude-fake-v1:0")["path"] == (
        "/model/anthropic.claude-fake-v1%3A0/converse"
    )


def test_boto3_converse_stream_decodes_the_fake_event_stream(fake_bedrock: FakeBedrock) -> None:
    answer = bedrock_client(fake_bedrock).converse_stream(
        modelId="anthropic.claude-tools-v1:0", messages=BEDROCK_MESSAGES
    )
    events = list(answer["stream"])
    names = [next(iter(e)) for e in events]
    assert names[0] == "messageStart" and names[-2:] == ["messageStop", "metadata"]
    tool_input = "".join(
        e["contentBlockDelta"]["delta"]["toolUse"]["input"]
        for e in events
        if "toolUse" in e.get("contentBlockDelta", {}).get("delta", {})
    )
    assert orjson.loads(tool_input) == TOOL_INPUT
    assert events[-2]["messageStop"]["stopReason"] == "tool_use"
    assert events[-1]["metadata"]["usage"]["outputTokens"] == 9


def test_boto3_sees_the_fake_stream_exception_and_corrupted_crc(fake_bedrock: FakeBedrock) -> None:
    client = bedrock_client(fake_bedrock)
    stream = client.converse_stream(modelId="fake.stream-throttled", messages=BEDROCK_MESSAGES)
    # a stream that raised still holds its connection: closed here, not at garbage collection
    with closing(stream["stream"]), pytest.raises(botocore.exceptions.EventStreamError) as caught:
        list(stream["stream"])
    assert caught.value.response["Error"]["Code"] == "throttlingException"
    corrupt = client.converse_stream(modelId="fake.corrupt", messages=BEDROCK_MESSAGES)
    with closing(corrupt["stream"]), pytest.raises(Exception, match=r"[Cc]hecksum|CRC"):
        list(corrupt["stream"])


def test_boto3_sees_the_fake_errors_and_a_bad_signature_is_refused(
    fake_bedrock: FakeBedrock,
) -> None:
    client = bedrock_client(fake_bedrock)
    with pytest.raises(client.exceptions.ThrottlingException):
        client.converse(modelId="fake.throttled", messages=BEDROCK_MESSAGES)
    with pytest.raises(client.exceptions.ValidationException):
        client.converse(modelId="fake.invalid", messages=BEDROCK_MESSAGES)
    wrong = bedrock_client(fake_bedrock, secret="not-the-secret")
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        wrong.converse(modelId="anthropic.claude-fake-v1:0", messages=BEDROCK_MESSAGES)
    assert caught.value.response["Error"]["Code"] == "InvalidSignatureException"


# -- Vertex AI -----------------------------------------------------------------------------------


def vertex_credentials(fake: FakeVertex) -> service_account.Credentials:
    return service_account.Credentials.from_service_account_info(  # type: ignore[no-any-return]
        fake.service_account_info(),
        scopes=["https://www.googleapis.com/auth/cloud-platform"],
    )


GENAI_CLIENTS: list[genai.Client] = []


@pytest.fixture(autouse=True)
def close_genai_clients() -> Iterator[None]:
    yield
    while GENAI_CLIENTS:
        GENAI_CLIENTS.pop().close()


def genai_client(fake: FakeVertex) -> genai.Client:
    client = genai.Client(
        vertexai=True,
        project=PROJECT,
        location=LOCATION,
        credentials=vertex_credentials(fake),
        http_options=genai_types.HttpOptions(base_url=fake.origin, api_version="v1"),
    )
    GENAI_CLIENTS.append(client)
    return client


def test_google_genai_on_vertex_gets_a_token_and_parses_the_fake(fake_vertex: FakeVertex) -> None:
    before = fake_vertex.token_requests
    client = genai_client(fake_vertex)
    answer = client.models.generate_content(model="gemini-fake", contents="hi")
    assert answer.text == "".join(gemini_upstream.ANSWER)
    streamed = "".join(
        c.text or ""
        for c in client.models.generate_content_stream(model="gemini-fake", contents="hi")
    )
    assert streamed == "".join(gemini_upstream.ANSWER)
    assert fake_vertex.token_requests > before  # the JWT was exchanged (and verified)
    sent = fake_vertex.last(kind="predict", model="gemini-fake")
    assert sent["path"].startswith(
        f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/"
    )


def test_anthropic_vertex_sdk_parses_the_fake_raw_predict(fake_vertex: FakeVertex) -> None:
    with anthropic.AnthropicVertex(
        region=LOCATION,
        project_id=PROJECT,
        credentials=vertex_credentials(fake_vertex),
        base_url=f"{fake_vertex.origin}/v1",
        max_retries=0,
    ) as client:
        message = client.messages.create(
            model="claude-fake", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
        assert message.content[0].type == "text"
        assert message.content[0].text == "".join(anthropic_upstream.ANSWER)
        with client.messages.stream(
            model="claude-tools", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            final = stream.get_final_message()
        assert final.stop_reason == "tool_use"
    sent = fake_vertex.last(kind="predict", model="claude-tools")
    assert sent["path"].endswith(":streamRawPredict")
    assert "model" not in sent["body"] and sent["body"]["anthropic_version"]


def test_vertex_fake_refuses_a_jwt_signed_with_another_key(
    fake_vertex: FakeVertex, tmp_path: Path
) -> None:
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    info = fake_vertex.service_account_info() | {"private_key": other_key.decode()}
    credentials = service_account.Credentials.from_service_account_info(
        info, scopes=["https://www.googleapis.com/auth/cloud-platform"]
    )
    client = genai.Client(
        vertexai=True,
        project=PROJECT,
        location=LOCATION,
        credentials=credentials,
        http_options=genai_types.HttpOptions(base_url=fake_vertex.origin, api_version="v1"),
    )
    GENAI_CLIENTS.append(client)
    with pytest.raises(Exception, match=r"invalid_grant|Invalid JWT"):
        client.models.generate_content(model="gemini-fake", contents="hi")


def test_vertex_fake_refuses_a_call_without_a_token(fake_vertex: FakeVertex) -> None:
    answer = httpx.post(
        f"{fake_vertex.origin}/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/"
        "models/gemini-fake:generateContent",
        json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
        headers={"authorization": "Bearer not-a-token-the-fake-issued"},
    )
    assert answer.status_code == 401
    assert answer.json()["error"]["status"] == "UNAUTHENTICATED"


def test_google_genai_sees_the_fake_quota_error(fake_vertex: FakeVertex) -> None:
    with pytest.raises(genai_errors.ClientError) as caught:
        genai_client(fake_vertex).models.generate_content(model="gemini-exhausted", contents="hi")
    assert caught.value.code == 429
