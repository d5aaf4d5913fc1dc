"""One conformance suite, run against every chat provider kind through the gateway process:
the same OpenAI-shaped behaviour whatever the upstream's wire format (each behind its fake)."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import openai
import orjson
import pytest

from tests.conftest import Gateway


@dataclass(frozen=True)
class Kind:
    provider: str  # the configured provider name (x-klawd-provider)
    text: str  # a model answering text
    tools: str  # a model answering one tool call
    cut: str  # a model whose stream is cut mid-way
    error_event: str  # a model whose stream ends with an error event
    gateway: str = "gateway"  # the fixture serving it (the clouds: cloud_gateway)

    def __str__(self) -> str:
        return self.provider


KINDS = [
    Kind("openai", "openai/gpt-fake", "openai/tools-fake", "openai/cut-fake", "openai/error-event"),
    Kind(
        "anthropic",
        "anthropic/claude-fake",
        "anthropic/claude-tools",
        "anthropic/claude-cut",
        "anthropic/claude-error-event",
    ),
    Kind(
        "google",
        "google/gemini-fake",
        "google/gemini-tools",
        "google/gemini-cut",
        "google/gemini-error-event",
    ),
    Kind("azure", "azure/gpt-4o", "azure/tools", "azure/cut", "azure/error-event", "cloud_gateway"),
    Kind(
        "bedrock",
        "bedrock/claude",
        "bedrock/tools",
        "bedrock/cut",
        "bedrock/stream-error",
        "cloud_gateway",
    ),
    Kind(
        "vertex",
        "vertex/gemini",
        "vertex/gemini-tools",
        "vertex/gemini-cut",
        "vertex/gemini-error-event",
        "cloud_gateway",
    ),
    Kind(
        "vertex",
        "vertex/claude",
        "vertex/claude-tools",
        "vertex/claude-cut",
        "vertex/claude-error-event",
        "cloud_gateway",
    ),
]
MESSAGES = [{"role": "user", "content": "Say hello"}]
TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object"}},
}


@pytest.fixture
def served(request: pytest.FixtureRequest) -> tuple[Gateway, str]:
    """The gateway serving this test's kind, and a new key on it."""
    kind: Kind = request.node.callspec.params["kind"]
    gateway: Gateway = request.getfixturevalue(kind.gateway)
    return gateway, gateway.new_key()


def client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0, timeout=20)


def raw_stream(gateway: Gateway, key: str, body: dict[str, object]) -> list[bytes]:
    """The network reads a naive client makes (each split on nothing)."""
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"messages": MESSAGES, "stream": True, **body},
        timeout=20,
    ) as response:
        assert response.status_code == 200
        return list(response.iter_raw())


@pytest.mark.parametrize("kind", KINDS, ids=str)
def test_streamed_text_equals_the_non_streamed_text(
    served: tuple[Gateway, str], kind: Kind
) -> None:
    gateway, api_key = served
    sdk = client(gateway, api_key)
    response = sdk.chat.completions.with_raw_response.create(model=kind.text, messages=MESSAGES)
    completion = response.parse()
    chunks = list(sdk.chat.completions.create(model=kind.text, messages=MESSAGES, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == completion.choices[0].message.content
    assert completion.model == kind.text and {c.model for c in chunks} == {kind.text}
    assert response.headers["x-klawd-model"] == kind.text
    assert response.headers["x-klawd-provider"] == kind.provider
    assert float(response.headers["x-klawd-cost-usd"]) > 0


@pytest.mark.parametrize("kind", KINDS, ids=str)
def test_every_read_holds_whole_one_line_events(served: tuple[Gateway, str], kind: Kind) -> None:
    gateway, api_key = served
    reads = raw_stream(gateway, api_key, {"model": kind.tools, "tools": [TOOL]})
    for read in reads:
        assert read.endswith(b"\n\n"), f"a read ended mid-event: {read[-40:]!r}"
    events = [e for e in b"".join(reads).split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    ids = set()
    for event in events[:-1]:
        assert event.startswith(b"data: {") and b"\n" not in event
        chunk = orjson.loads(event.removeprefix(b"data: "))
        assert chunk["object"] == "chat.completion.chunk" and chunk["model"] == kind.tools
        ids.add(chunk["id"])
    assert len(ids) == 1, "one id for the whole stream"


@pytest.mark.parametrize("kind", KINDS, ids=str)
def test_streamed_tool_call_reassembles_to_a_json_object(
    served: tuple[Gateway, str], kind: Kind
) -> None:
    gateway, api_key = served
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in client(gateway, api_key).chat.completions.create(
        model=kind.tools, messages=MESSAGES, tools=[TOOL], stream=True
    ):
        if not chunk.choices:
            continue
        for delta in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            if delta.function is not None:
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert list(calls) == [0]
    assert calls[0]["id"] and calls[0]["name"] == "get_weather"
    assert isinstance(orjson.loads(calls[0]["arguments"]), dict)
    assert finish == "tool_calls"


@pytest.mark.parametrize("kind", KINDS, ids=str)
@pytest.mark.parametrize("include_usage", [False, True])
def test_usage_chunk_only_when_asked(
    served: tuple[Gateway, str], kind: Kind, include_usage: bool
) -> None:
    gateway, api_key = served
    chunks = list(
        client(gateway, api_key).chat.completions.create(
            model=kind.text,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": include_usage},
        )
    )
    with_usage = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert with_usage == [chunks[-1]] and chunks[-1].choices == []
        usage = chunks[-1].usage
        assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    else:
        assert with_usage == []


@pytest.mark.parametrize("kind", KINDS, ids=str)
@pytest.mark.parametrize("failure", ["cut", "error_event"])
def test_stream_failing_mid_way_ends_with_one_error_event(
    served: tuple[Gateway, str], kind: Kind, failure: str
) -> None:
    gateway, api_key = served
    reads = raw_stream(gateway, api_key, {"model": getattr(kind, failure)})
    blob = b"".join(reads)
    events = [e for e in blob.split(b"\n\n") if e]
    assert b"[DONE]" not in blob
    assert orjson.loads(events[0].removeprefix(b"data: "))["object"] == "chat.completion.chunk"
    last = orjson.loads(events[-1].removeprefix(b"data: "))
    assert set(last) == {"error"}
    assert last["error"]["type"] in {"bad_gateway", "service_unavailable"}
