"""The cloud kinds' settings (defaults from region/location, required fields, one clear line) and
the pure parts of their translation: Bedrock Converse bodies and answers, Vertex publisher
choice, Azure deployment URLs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from gateway.errors import InvalidRequest
from gateway.providers.azure import AzureOpenAIProvider
from gateway.providers.base import MissingCredentials
from gateway.providers.bedrock import BedrockProvider
from gateway.providers.bedrock_converse import translate_request, translate_response
from gateway.providers.registry import build_provider
from gateway.providers.sigv4 import AwsCredentials
from gateway.providers.vertex import is_anthropic
from gateway.routing.catalog import Secret
from gateway.settings import ConfigError, ProviderSettings, load_settings
from tests.fakes.server import PNG_1X1
from tests.unit.translation_helpers import chat_call


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "klawd.toml"
    path.write_text(text)
    return path


def test_cloud_base_urls_default_from_region_and_location(tmp_path: Path) -> None:
    settings = load_settings(
        write(
            tmp_path,
            '[providers.aws]\nkind = "bedrock"\nregion = "eu-central-1"\n'
            '[providers.gcp]\nkind = "vertex"\nproject = "p"\nlocation = "europe-west4"\n'
            '[providers.gcp-global]\nkind = "vertex"\nproject = "p"\nlocation = "global"\n'
            '[providers.az]\nkind = "azure"\nbase_url = "https://res.openai.azure.com"\n',
        )
    )
    assert (
        settings.providers["aws"].base_url == "https://bedrock-runtime.eu-central-1.amazonaws.com"
    )
    assert settings.providers["gcp"].base_url == "https://europe-west4-aiplatform.googleapis.com"
    assert settings.providers["gcp-global"].base_url == "https://aiplatform.googleapis.com"
    assert settings.providers["az"].api_version == "2024-10-21"
    assert settings.providers["aws"].access_key_id_env == "AWS_ACCESS_KEY_ID"
    assert settings.providers["gcp"].credentials_file_env == "GOOGLE_APPLICATION_CREDENTIALS"


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ('kind = "bedrock"', "providers.aws.region"),
        ('kind = "vertex"\nlocation = "us-central1"', "providers.aws.project"),
        ('kind = "vertex"\nproject = "p"', "providers.aws.location"),
        ('kind = "azure"', "providers.aws.base_url"),
    ],
)
def test_a_cloud_without_its_required_field_is_one_clear_line(
    tmp_path: Path, table: str, named: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, f"[providers.aws]\n{table}\n"))
    assert named in str(caught.value)


def test_bedrock_request_carries_system_turns_tools_and_inference_config() -> None:
    image = "data:image/png;base64," + __import__("base64").b64encode(PNG_1X1).decode()
    call = chat_call(
        "bedrock",
        "anthropic.claude-v1:0",
        messages=[
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look"},
                    {"type": "image_url", "image_url": {"url": image}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "t1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"a": 1}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "t1", "content": '{"ok": true}'},
            {"role": "tool", "tool_call_id": "t1", "content": "plain"},
        ],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        tool_choice="required",
        max_tokens=99,
        top_p=0.9,
    )
    body = translate_request(call)
    assert body["system"] == [{"text": "Be brief."}]
    assert body["messages"][0]["content"][1] == {
        "image": {"format": "png", "source": {"bytes": image.split(",", 1)[1]}}
    }
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [{"toolUse": {"toolUseId": "t1", "name": "f", "input": {"a": 1}}}],
    }
    assert body["messages"][2]["content"] == [
        {"toolResult": {"toolUseId": "t1", "content": [{"json": {"ok": True}}]}},
        {"toolResult": {"toolUseId": "t1", "content": [{"text": "plain"}]}},
    ]
    assert body["toolConfig"] == {
        "tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {"type": "object"}}}}],
        "toolChoice": {"any": {}},
    }
    assert body["inferenceConfig"] == {"maxTokens": 99, "topP": 0.9}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (
            {"tool_choice": "none", "tools": [{"type": "function", "function": {"name": "f"}}]},
            "tool_choice",
        ),
        ({"seed": 3}, "seed"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}
                        ],
                    }
                ]
            },
            "messages[0].content[0]",
        ),
    ],
)
def test_what_converse_cannot_honour_is_a_400_naming_it(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        translate_request(chat_call("bedrock", "m", **fields))
    assert caught.value.param == param


def test_bedrock_answer_becomes_a_chat_completion_with_cache_aware_usage() -> None:
    call = chat_call("bedrock", "m")
    answer = {
        "output": {
            "message": {
                "role": "assistant",
                "content": [
                    {"reasoningContent": {"reasoningText": {"text": "hmm"}}},
                    {"text": "Checking."},
                    {"toolUse": {"toolUseId": "tu1", "name": "f", "input": {"x": [1]}}},
                ],
            }
        },
        "stopReason": "tool_use",
        "usage": {
            "inputTokens": 5,
            "outputTokens": 7,
            "cacheReadInputTokens": 3,
            "cacheWriteInputTokens": 2,
        },
    }
    completion = translate_response(call, answer)
    message = completion.body["choices"][0]["message"]
    assert message["content"] == "Checking."
    assert message["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"x":[1]}'}
    assert completion.body["choices"][0]["finish_reason"] == "tool_calls"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (10, 7)
    assert completion.body["usage"]["prompt_tokens_details"] == {"cached_tokens": 3}


def test_vertex_publisher_rule_is_the_claude_prefix() -> None:
    assert is_anthropic("claude-sonnet-4@20250514")
    assert not is_anthropic("gemini-2.0-flash-001")
    assert not is_anthropic("anthropic-claude")  # the rule is the prefix, nothing else


def test_azure_sends_the_deployment_in_the_url_and_the_key_as_api_key() -> None:
    settings = ProviderSettings(kind="azure", base_url="https://res.openai.azure.com/")
    provider = AzureOpenAIProvider("az", settings, Secret("k-1"))
    request = provider.build_request(chat_call("azure", "my deploy/1"), stream=False)
    assert request.url == (
        "https://res.openai.azure.com/openai/deployments/my%20deploy%2F1/chat/completions"
        "?api-version=2024-10-21"
    )
    assert request.headers["api-key"] == "k-1" and "authorization" not in request.headers
    assert orjson.loads(request.body)["model"] == "my deploy/1"


def test_every_provider_field_is_documented() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    section = docs.split("## `[providers.NAME]`", 1)[1].split("\n## ", 1)[0]
    example = (Path(__file__).resolve().parents[2] / "docs" / "klawd.example.toml").read_text()
    for field in msgspec.structs.fields(ProviderSettings):
        assert f"| `{field.name}` |" in section, f"providers.{field.name} is not documented"
        if field.name != "retry":
            assert f"\n{field.name} = " in example, f"{field.name} is not in klawd.example.toml"


@pytest.mark.parametrize(
    ("status", "error_type", "expected", "retryable"),
    [
        (429, "ThrottlingException", "rate_limit_exceeded", True),
        (429, "ModelNotReadyException", "rate_limit_exceeded", True),
        (400, "ValidationException", "invalid_request", False),
        (403, "UnrecognizedClientException", "bad_gateway", False),
        (403, "AccessDeniedException", "bad_gateway", False),
        (404, "ResourceNotFoundException", "bad_gateway", False),
        (408, "ModelTimeoutException", "gateway_timeout", True),
        (424, "ModelErrorException", "bad_gateway", False),
        (500, "InternalServerException", "service_unavailable", True),
        (503, "ServiceUnavailableException", "service_unavailable", True),
    ],
)
def test_bedrock_errors_are_mapped_by_their_error_type_header(
    status: int, error_type: str, expected: str, retryable: bool
) -> None:
    settings = ProviderSettings(kind="bedrock", base_url="http://x.invalid", region="us-east-1")
    credentials = AwsCredentials("AKID", Secret("the-secret"), Secret("the-token"))
    provider = BedrockProvider("bedrock", settings, credentials)
    body = orjson.dumps({"message": "denied for the-secret and the-token"})
    headers = {"x-amzn-errortype": f"{error_type}:http://internal.amazon.com/coral/com.amazon/"}
    error = provider.map_error(status, body, headers)
    assert error.type == expected
    assert error.retryable is retryable
    assert "the-secret" not in error.message and "the-token" not in error.message


def test_cloud_credentials_missing_name_their_variables_only() -> None:
    bedrock = ProviderSettings(kind="bedrock", base_url="http://x.invalid", region="us-east-1")
    with pytest.raises(MissingCredentials) as caught:
        build_provider("aws", bedrock, None, {"AWS_ACCESS_KEY_ID": "AKID-VALUE"})
    assert "AWS_SECRET_ACCESS_KEY" in str(caught.value) and "AKID-VALUE" not in str(caught.value)
    azure = ProviderSettings(kind="azure", base_url="http://x.invalid")
    with pytest.raises(MissingCredentials) as caught:
        build_provider("az", azure, None, {})
    assert "entra_token_env" in str(caught.value)
    vertex = ProviderSettings(kind="vertex", base_url="http://x.invalid", project="p", location="l")
    with pytest.raises(MissingCredentials) as caught:
        build_provider("gcp", vertex, None, {})
    assert "GOOGLE_APPLICATION_CREDENTIALS" in str(caught.value)
