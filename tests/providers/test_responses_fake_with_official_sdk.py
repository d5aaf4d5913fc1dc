"""The fake OpenAI upstream's `/v1/responses` proven with the official `openai` SDK: it parses
the whole answer and accumulates the typed event stream (the SDK's strict stream state checks
identities, indices and the final response)."""

from __future__ import annotations

import openai
import orjson

from tests.fakes.openai_upstream import ANSWER_WORDS, TOOL_CALL, FakeOpenAI


def test_openai_sdk_parses_the_fake_response(fake_openai: FakeOpenAI) -> None:
    with openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0) as sdk:
        response = sdk.responses.create(model="gpt-fake", input="Say hello")
    assert response.output_text == "".join(ANSWER_WORDS)
    assert response.status == "completed"
    assert response.usage is not None and response.usage.total_tokens == 16


def test_openai_sdk_accumulates_the_fake_response_stream(fake_openai: FakeOpenAI) -> None:
    with (
        openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0) as sdk,
        sdk.responses.stream(model="gpt-fake", input="Say hello") as stream,
    ):
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert deltas == ANSWER_WORDS
    assert final.output_text == "".join(ANSWER_WORDS)


def test_openai_sdk_accumulates_the_fake_function_call_stream(fake_openai: FakeOpenAI) -> None:
    tool = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
    with (
        openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0) as sdk,
        sdk.responses.stream(model="tools-fake", input="Weather?", tools=[tool]) as stream,  # type: ignore[list-item]
    ):
        fragments = [e for e in stream if e.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    assert len(fragments) > 1
    call = final.output[0]
    assert call.type == "function_call"
    assert call.call_id == TOOL_CALL["id"]
    assert orjson.loads(call.arguments) == orjson.loads(TOOL_CALL["function"]["arguments"])  # type: ignore[index]
