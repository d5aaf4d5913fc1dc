"""The OpenAI Responses API end to end: the official `openai` SDK (`responses.create`, streamed
and not, `retrieve`, `delete`, `input_items.list`) → the gateway process → the fake of every
provider kind (OpenAI-shaped, Anthropic, Gemini, and the built-in echo model). Asserts on what
the SDK parses or accumulates and on the body each fake received."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import Gateway
from tests.fakes import anthropic_upstream, gemini_upstream, openai_upstream
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.openai_upstream import FakeOpenAI

WEATHER_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@dataclass(frozen=True)
class Family:
    name: str
    text: str
    tools: str
    answer: str
    tool_arguments: dict[str, Any]
    usage: tuple[int, int, int, int]  # input tokens, of which cache reads, writes; output
    provider: str


FAMILIES = [
    Family(
        "openai",
        "openai/gpt-fake",
        "openai/tools-fake",
        "".join(openai_upstream.ANSWER_WORDS),
        {"city": "Paris", "unit": "c"},
        (12, 0, 0, 4),
        "openai",
    ),
    Family(
        "anthropic",
        "anthropic/claude-fake",
        "anthropic/claude-tools",
        "".join(anthropic_upstream.ANSWER),
        anthropic_upstream.TOOL_INPUT,
        (35, 20, 5, 7),  # input 10 + cache writes 5 + cache reads 20
        "anthropic",
    ),
    Family(
        "gemini",
        "google/gemini-fake",
        "google/gemini-tools",
        "".join(gemini_upstream.ANSWER),
        gemini_upstream.TOOL_ARGS,
        (11, 4, 0, 9),  # candidates 6 + thoughts 3
        "google",
    ),
]
IDS = [f.name for f in FAMILIES]


def client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0, timeout=20)


def usage_of(response: Any) -> tuple[int, int, int, int]:
    usage = response.usage
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    details = usage.input_tokens_details
    return (
        usage.input_tokens,
        details.cached_tokens,
        details.cache_write_tokens,
        usage.output_tokens,
    )


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_text_response_with_usage_headers_and_cost(
    gateway: Gateway, api_key: str, family: Family
) -> None:
    raw = client(gateway, api_key).responses.with_raw_response.create(
        model=family.text, input="Say hello"
    )
    response = raw.parse()
    assert response.object == "response" and re.fullmatch(r"resp_[0-9a-f]{32}", response.id)
    assert response.status == "completed"
    assert response.output_text == family.answer
    assert response.model == family.text
    assert usage_of(response) == family.usage
    assert raw.headers["x-klawd-model"] == family.text
    assert raw.headers["x-klawd-provider"] == family.provider
    assert raw.headers["x-ratelimit-limit-requests"]
    assert float(raw.headers["x-klawd-cost-usd"]) > 0


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_streamed_events_accumulate_the_same_response(
    gateway: Gateway, api_key: str, family: Family
) -> None:
    with client(gateway, api_key).responses.stream(model=family.text, input="Say hello") as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == family.answer
    assert len(deltas) > 1, "streamed in several deltas"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1].type == "response.completed"
    assert final.output_text == family.answer
    assert final.model == family.text
    assert usage_of(final) == family.usage
    # stored as streamed
    assert client(gateway, api_key).responses.retrieve(final.id).output_text == family.answer


def test_echo_model_answers_streamed_and_not(gateway: Gateway, api_key: str) -> None:
    sdk = client(gateway, api_key)
    assert sdk.responses.create(model="klawd/echo", input="one two three").output_text == (
        "one two three"
    )
    with sdk.responses.stream(model="klawd/echo", input="four five") as stream:
        assert stream.get_final_response().output_text == "four five"


def _call_seen_by(family: Family, fakes: Any, call_id: str) -> tuple[str, dict[str, Any], str]:
    """(call id, arguments, tool output) as the second turn's upstream received them."""
    fake_openai, fake_anthropic, fake_gemini = fakes
    if family.name == "openai":
        messages = fake_openai.last_request("gpt-fake")["body"]["messages"]
        call = messages[-2]["tool_calls"][0]
        assert messages[-1]["role"] == "tool"
        arguments = orjson.loads(call["function"]["arguments"])
        return call["id"], arguments, messages[-1]["content"]
    if family.name == "anthropic":
        messages = fake_anthropic.last_request("claude-fake")["body"]["messages"]
        use = messages[-2]["content"][-1]
        result = messages[-1]["content"][0]
        assert result["tool_use_id"] == use["id"]
        content = result["content"]
        return use["id"], use["input"], content if isinstance(content, str) else content[0]["text"]
    contents = fake_gemini.last_request("gemini-fake")["body"]["contents"]
    call = contents[-2]["parts"][-1]["functionCall"]
    response = contents[-1]["parts"][0]["functionResponse"]
    assert response["name"] == call["name"]
    return call_id, call["args"], orjson.dumps(response["response"]).decode()


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_function_call_round_trip_with_exact_arguments(
    gateway: Gateway,
    api_key: str,
    family: Family,
    stream: bool,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
) -> None:
    sdk = client(gateway, api_key)
    kwargs: Any = {"model": family.tools, "input": "Weather in Paris?", "tools": [WEATHER_TOOL]}
    if stream:
        with sdk.responses.stream(**kwargs) as events:
            fragments = [e for e in events if e.type == "response.function_call_arguments.delta"]
            first = events.get_final_response()
        if family.name != "gemini":  # Gemini sends a function call whole: one fragment
            assert len(fragments) > 1
    else:
        first = sdk.responses.create(**kwargs)
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    assert calls[0].name == "get_weather"
    assert orjson.loads(calls[0].arguments) == family.tool_arguments
    assert calls[0].call_id
    second = sdk.responses.create(
        model=family.text,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"}],
        tools=[WEATHER_TOOL],
    )
    assert second.output_text == family.answer
    call_id, arguments, output = _call_seen_by(
        family, (fake_openai, fake_anthropic, fake_gemini), calls[0].call_id
    )
    assert call_id == calls[0].call_id
    assert arguments == family.tool_arguments
    assert "sunny" in output


def test_instructions_are_each_providers_system_prompt(
    gateway: Gateway,
    api_key: str,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
) -> None:
    sdk = client(gateway, api_key)
    for family in FAMILIES:
        sdk.responses.create(
            model=family.text, input="Say hello", instructions="Talk like a pirate."
        )
    messages = fake_openai.last_request("gpt-fake")["body"]["messages"]
    assert messages[0] == {"role": "system", "content": "Talk like a pirate."}
    assert messages[1] == {"role": "user", "content": "Say hello"}
    system = fake_anthropic.last_request("claude-fake")["body"]["system"]
    text = system if isinstance(system, str) else system[0]["text"]
    assert text == "Talk like a pirate."
    instruction = fake_gemini.last_request("gemini-fake")["body"]["systemInstruction"]
    assert instruction["parts"][0]["text"] == "Talk like a pirate."


SCHEMA: Any = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}


def test_structured_output_reaches_openai_and_gemini_and_anthropic_refuses_it_clearly(
    gateway: Gateway, api_key: str, fake_openai: FakeOpenAI, fake_gemini: FakeGemini
) -> None:
    sdk = client(gateway, api_key)
    text: Any = {
        "format": {"type": "json_schema", "name": "reply", "schema": SCHEMA, "strict": True}
    }
    response = sdk.responses.create(model="openai/gpt-fake", input="Say hello", text=text)
    assert response.text is not None and response.text.format.type == "json_schema"
    sent = fake_openai.last_request("gpt-fake")["body"]["response_format"]
    assert sent == {
        "type": "json_schema",
        "json_schema": {"name": "reply", "schema": SCHEMA, "strict": True},
    }
    sdk.responses.create(model="google/gemini-fake", input="Say hello", text=text)
    config = fake_gemini.last_request("gemini-fake")["body"]["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == SCHEMA
    sdk.responses.create(
        model="openai/gpt-fake", input="Say hello", text={"format": {"type": "json_object"}}
    )
    assert fake_openai.last_request("gpt-fake")["body"]["response_format"] == {
        "type": "json_object"
    }
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(model="anthropic/claude-fake", input="Say hello", text=text)
    assert refused.value.body["param"] == "text.format"  # type: ignore[index]


def test_previous_response_id_carries_the_conversation_to_another_provider(
    gateway: Gateway, api_key: str, fake_anthropic: FakeAnthropic
) -> None:
    sdk = client(gateway, api_key)
    first = sdk.responses.create(
        model="openai/gpt-fake", input="Say hello", instructions="Only for turn one."
    )
    second = sdk.responses.create(
        model="anthropic/claude-fake", input="And again?", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id
    assert second.output_text == "".join(anthropic_upstream.ANSWER)
    body = fake_anthropic.last_request("claude-fake")["body"]
    assert "system" not in body, "instructions do not carry over (as OpenAI's)"
    texts = [
        (m["role"], m["content"] if isinstance(m["content"], str) else m["content"][0]["text"])
        for m in body["messages"]
    ]
    assert texts == [
        ("user", "Say hello"),
        ("assistant", "".join(openai_upstream.ANSWER_WORDS)),
        ("user", "And again?"),
    ]
    third = sdk.responses.create(
        model="google/gemini-fake", input="Once more", previous_response_id=second.id
    )
    assert third.output_text == "".join(gemini_upstream.ANSWER)


def test_retrieve_input_items_and_delete(gateway: Gateway, api_key: str) -> None:
    sdk = client(gateway, api_key)
    created = sdk.responses.create(
        model="openai/gpt-fake",
        input=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "input_text", "text": "Say hello"}]},
        ],
        metadata={"ticket": "42"},
    )
    retrieved = sdk.responses.retrieve(created.id)
    assert retrieved.id == created.id
    assert retrieved.output_text == created.output_text
    assert retrieved.metadata == {"ticket": "42"}
    items = sdk.responses.input_items.list(created.id)
    assert [i.role for i in items.data] == ["user", "developer"]  # type: ignore[union-attr]  # desc
    assert all(i.id for i in items.data)
    ascending = sdk.responses.input_items.list(created.id, order="asc", limit=1)
    assert [i.role for i in ascending.data] == ["developer"]  # type: ignore[union-attr]
    assert ascending.has_more
    sdk.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.delete(created.id)


def test_store_false_keeps_nothing(gateway: Gateway, api_key: str) -> None:
    sdk = client(gateway, api_key)
    response = sdk.responses.create(model="openai/gpt-fake", input="Say hello", store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.responses.create(
            model="openai/gpt-fake", input="again", previous_response_id=response.id
        )
    assert missing.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_another_accounts_response_is_not_found(gateway: Gateway, api_key: str) -> None:
    mine = client(gateway, api_key).responses.create(model="openai/gpt-fake", input="Say hello")
    theirs = client(gateway, gateway.new_key())
    for call in (
        lambda: theirs.responses.retrieve(mine.id),
        lambda: theirs.responses.input_items.list(mine.id),
        lambda: theirs.responses.delete(mine.id),
        lambda: theirs.responses.create(
            model="openai/gpt-fake", input="x", previous_response_id=mine.id
        ),
    ):
        with pytest.raises(openai.NotFoundError) as missing:
            call()
        assert missing.value.body["type"] == "not_found"  # type: ignore[index]
    assert client(gateway, api_key).responses.retrieve(mine.id).id == mine.id


def _post(gateway: Gateway, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/v1/responses",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=20,
    )


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (
            {"model": "openai/gpt-fake", "input": "x", "previous_response_id": "resp_nope"},
            404,
            "previous_response_id",
        ),
        ({"model": "openai/gpt-fake", "input": "x", "temperature": "hot"}, 400, "temperature"),
        ({"model": "openai/gpt-fake", "input": 7}, 400, "input"),
        (
            {"model": "openai/gpt-fake", "input": "x", "max_output_tokens": 0},
            400,
            "max_output_tokens",
        ),
        (
            {"model": "openai/gpt-fake", "input": [{"type": "function_call", "name": "f"}]},
            400,
            "input[0].call_id",
        ),
        (
            {"model": "openai/gpt-fake", "input": [{"type": "web_search_call", "id": "w"}]},
            400,
            "input[0].type",
        ),
        (
            {
                "model": "openai/gpt-fake",
                "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}],
            },
            400,
            "input[0].content[0].type",
        ),
        (
            {
                "model": "openai/gpt-fake",
                "input": [
                    {"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}
                ],
            },
            400,
            "input[0].content[0].image_url",
        ),
        (
            {"model": "openai/gpt-fake", "input": "x", "tools": [{"type": "web_search"}]},
            400,
            "tools[0].type",
        ),
        ({"model": "openai/gpt-fake", "input": "x", "background": True}, 400, "background"),
        ({"model": "replicate/not-chat", "input": "x"}, 400, "model"),
    ],
)
def test_bad_input_is_refused_in_openais_envelope(
    gateway: Gateway, api_key: str, body: dict[str, Any], status: int, param: str
) -> None:
    answer = _post(gateway, api_key, body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["param"] == param
    assert error["message"]


def test_a_conversation_past_the_context_is_refused_naming_the_input(
    gateway: Gateway, api_key: str
) -> None:
    """The earlier turns count: each turn fits the model's 8192 tokens, both together do not."""
    sdk = client(gateway, api_key)
    first = sdk.responses.create(model="klawd/echo", input="x " * 9_000)
    answer = _post(
        gateway,
        api_key,
        {"model": "openai/gpt-fake", "input": "y" * 20_000, "previous_response_id": first.id},
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "input")
    alone = _post(gateway, api_key, {"model": "openai/gpt-fake", "input": "y" * 20_000})
    assert alone.status_code == 200, alone.text


def test_neutral_values_of_unsupported_fields_are_accepted(gateway: Gateway, api_key: str) -> None:
    answer = _post(
        gateway,
        api_key,
        {
            "model": "openai/gpt-fake",
            "input": "x",
            "truncation": "disabled",
            "include": [],
            "background": False,
            "reasoning": {"effort": None},
            "prompt_cache_key": "k",
        },
    )
    assert answer.status_code == 200, answer.text


def test_failure_mid_stream_ends_with_error_and_response_failed(
    gateway: Gateway, api_key: str
) -> None:
    with client(gateway, api_key).responses.create(
        model="openai/error-event", input="Say hello", stream=True
    ) as stream:
        events = list(stream)
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-2:] == ["error", "response.failed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.code == "server_error"
