"""Translation fidelity end to end (docs/decisions/0014): interleaved parallel tool calls on
`/v1/messages`, stop sequences both ways. The official SDKs are the clients: `anthropic` for
`/v1/messages`, `openai` for chat; the fakes are the upstreams."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

from tests.conftest import Gateway
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_upstream import FakeOpenAI

HELLO: Any = [{"role": "user", "content": "Count to five"}]
TOOLS: Any = [
    {"name": n, "input_schema": {"type": "object", "properties": {}}}
    for n in ("get_weather", "get_time")
]


def claude(gateway: Gateway, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=20)


def chat(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0, timeout=20)


def message(sdk: anthropic.Anthropic, stream: bool, **kwargs: Any) -> anthropic.types.Message:
    if not stream:
        return sdk.messages.create(max_tokens=100, **kwargs)
    with sdk.messages.stream(max_tokens=100, **kwargs) as events:
        return events.get_final_message()


# -- interleaved parallel tool calls -----------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_interleaved_parallel_tool_calls_reach_messages_clients_exactly(
    gateway: Gateway, api_key: str, stream: bool
) -> None:
    answer = message(
        claude(gateway, api_key),
        stream,
        model="openai/parallel-fake",
        messages=[{"role": "user", "content": "Weather in Paris and time in Rome?"}],
        tools=TOOLS,
    )
    calls = [(b.id, b.name, b.input) for b in answer.content if b.type == "tool_use"]
    assert calls == [
        ("call_w", "get_weather", {"city": "Paris"}),
        ("call_t", "get_time", {"zone": "Europe/Rome"}),
    ]
    assert answer.stop_reason == "tool_use"


def test_interleaved_tool_call_stream_is_sequential_blocks_on_the_wire(
    gateway: Gateway, api_key: str
) -> None:
    with claude(gateway, api_key).messages.stream(
        model="openai/parallel-fake", max_tokens=100, messages=HELLO, tools=TOOLS
    ) as events:
        kinds = [(e.type, getattr(e, "index", None)) for e in events if "content_block" in e.type]
    starts = [i for t, i in kinds if t == "content_block_start"]
    stops = [i for t, i in kinds if t == "content_block_stop"]
    assert starts == stops == [0, 1]
    # block 1 starts only after block 0 stopped
    assert kinds.index(("content_block_stop", 0)) < kinds.index(("content_block_start", 1))


def test_interleaved_parallel_tool_calls_pass_through_chat_streams(
    gateway: Gateway, api_key: str
) -> None:
    with chat(gateway, api_key).chat.completions.stream(
        model="openai/parallel-fake", messages=HELLO
    ) as events:
        final = events.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [c.function.arguments for c in calls] == [  # type: ignore[union-attr]
        '{"city": "Paris"}',
        '{"zone": "Europe/Rome"}',
    ]


# -- stop sequences ----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_anthropic_stop_sequence_survives_passthrough(
    gateway: Gateway, api_key: str, fake_anthropic: FakeAnthropic, stream: bool
) -> None:
    answer = message(
        claude(gateway, api_key),
        stream,
        model="anthropic/claude-stop-seq",
        messages=HELLO,
        stop_sequences=["END"],
    )
    assert (answer.stop_reason, answer.stop_sequence) == ("stop_sequence", "END")
    assert fake_anthropic.last_request("claude-stop-seq")["body"]["stop_sequences"] == ["END"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_openai_shaped_upstream_naming_its_stop_string_gives_stop_sequence(
    gateway: Gateway, api_key: str, fake_openai: FakeOpenAI, stream: bool
) -> None:
    answer = message(
        claude(gateway, api_key),
        stream,
        model="openai/stop-seq-fake",
        messages=HELLO,
        stop_sequences=[", 4", "five"],
    )
    assert (answer.stop_reason, answer.stop_sequence) == ("stop_sequence", ", 4")
    assert answer.content[0].text == "1, 2, 3"  # type: ignore[union-attr]
    assert fake_openai.last_request("stop-seq-fake")["body"]["stop"] == [", 4", "five"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_openai_upstream_that_does_not_say_gives_end_turn(
    gateway: Gateway, api_key: str, stream: bool
) -> None:
    answer = message(
        claude(gateway, api_key),
        stream,
        model="openai/gpt-fake",
        messages=HELLO,
        stop_sequences=["END"],
    )
    assert (answer.stop_reason, answer.stop_sequence) == ("end_turn", None)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_chat_stop_reaches_anthropic_and_its_stop_sequence_reads_as_stop(
    gateway: Gateway, api_key: str, fake_anthropic: FakeAnthropic, stream: bool
) -> None:
    sdk = chat(gateway, api_key)
    if stream:
        chunks = list(
            sdk.chat.completions.create(
                model="anthropic/claude-stop-seq", messages=HELLO, stop="END", stream=True
            )
        )
        finishes = [c.choices[0] for c in chunks if c.choices and c.choices[0].finish_reason]
        assert [c.finish_reason for c in finishes] == ["stop"]
        # the matched string, where vLLM puts it (OpenAI's schema has no field for it)
        assert (finishes[0].model_extra or {})["stop_reason"] == "END"
    else:
        answer = sdk.chat.completions.create(
            model="anthropic/claude-stop-seq", messages=HELLO, stop=["END", "FIN"]
        )
        assert answer.choices[0].finish_reason == "stop"
        assert (answer.choices[0].model_extra or {})["stop_reason"] == "END"
    sent = fake_anthropic.last_request("claude-stop-seq")["body"]["stop_sequences"]
    assert sent == (["END"] if stream else ["END", "FIN"])


# -- prompt caching ----------------------------------------------------------------------------

# The fakes' usage (see each fake's docstring) at the `*-cache-priced` models' prices
# (tests/fakes/provider_config.py: input $1, output $2, cache reads $0.1, writes $1.25 per M):
# anthropic claude-fake: 10 input + 5 written + 20 read, 7 output -> 32.25 -> 33 micro-dollars;
# openai cached-fake: 2006 prompt of which 1920 read, 4 output -> 286;
# gemini gemini-fake: 11 prompt of which 4 cached, 6 + 3 thought output -> 25.4 -> 26.
CACHE_COSTS = {
    "anthropic/claude-cache-priced": 0.000033,
    "openai/cached-priced": 0.000286,
    "google/gemini-cache-priced": 0.000026,
}
CACHED_USAGE = {  # (prompt_tokens, cached_tokens, cache writes) as chat clients see them
    "anthropic/claude-cache-priced": (35, 20, 5),
    "openai/cached-priced": (2006, 1920, 0),
    "google/gemini-cache-priced": (11, 4, 0),
}


def ledger_cost(gateway: Gateway, key: str) -> float:
    from tests.integration.test_limits_and_billing import wait_for_ledger

    cost: float = wait_for_ledger(gateway, key, 1)["usage_today"]["cost_usd"]
    return cost


@pytest.mark.parametrize("model", list(CACHE_COSTS))
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_cached_prompt_tokens_reach_chat_clients_and_bill_at_cache_prices(
    gateway: Gateway, model: str, stream: bool
) -> None:
    key = gateway.new_key()
    sdk = chat(gateway, key)
    if stream:
        chunks = list(
            sdk.chat.completions.create(
                model=model,
                messages=HELLO,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        usage = chunks[-1].usage
    else:
        raw = sdk.chat.completions.with_raw_response.create(model=model, messages=HELLO)
        usage = raw.parse().usage
        assert float(raw.headers["x-klawd-cost-usd"]) == pytest.approx(CACHE_COSTS[model])
    assert usage is not None and usage.prompt_tokens_details is not None
    prompt, cached, written = CACHED_USAGE[model]
    assert (usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens) == (prompt, cached)
    assert (usage.model_extra or {}).get("cache_creation_input_tokens", 0) == written
    assert ledger_cost(gateway, key) == pytest.approx(CACHE_COSTS[model], abs=1e-9)


@pytest.mark.parametrize("model", list(CACHE_COSTS))
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_cached_prompt_tokens_reach_messages_clients_and_bill_at_cache_prices(
    gateway: Gateway, model: str, stream: bool
) -> None:
    key = gateway.new_key()
    answer = message(claude(gateway, key), stream, model=model, messages=HELLO)
    prompt, cached, written = CACHED_USAGE[model]
    usage = answer.usage
    assert usage.cache_read_input_tokens == cached
    assert (usage.cache_creation_input_tokens or 0) == written
    assert usage.input_tokens == prompt - cached - written
    assert ledger_cost(gateway, key) == pytest.approx(CACHE_COSTS[model], abs=1e-9)


def test_models_list_shows_cache_prices(gateway: Gateway, api_key: str) -> None:
    listed = chat(gateway, api_key).models.retrieve("anthropic/claude-cache-priced")
    pricing = (listed.model_extra or {})["pricing"]
    assert (pricing["cache_read"], pricing["cache_write"]) == (0.1, 1.25)


def test_cache_control_from_the_openai_schema_reaches_anthropic(
    gateway: Gateway, api_key: str, fake_anthropic: FakeAnthropic
) -> None:
    ephemeral = {"type": "ephemeral"}
    chat(gateway, api_key).chat.completions.create(
        model="anthropic/claude-fake",
        messages=[
            {
                "role": "system",
                "content": [
                    {"type": "text", "text": "You are terse."},
                    {"type": "text", "text": "A long manual.", "cache_control": ephemeral},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "A long document.",
                        "cache_control": {"type": "ephemeral", "ttl": "1h"},
                    },
                    {"type": "text", "text": "Summarise it."},
                ],
            },
            {"role": "assistant", "content": "Summary."},
            {"role": "user", "content": "Shorter.", "cache_control": ephemeral},
        ],
        tools=[
            {
                "type": "function",
                "function": {"name": "lookup", "parameters": {"type": "object"}},
                "cache_control": ephemeral,
            }
        ],
    )
    sent = fake_anthropic.last_request("claude-fake")["body"]
    assert sent["system"] == [
        {"type": "text", "text": "You are terse."},
        {"type": "text", "text": "A long manual.", "cache_control": ephemeral},
    ]
    assert sent["messages"][0]["content"] == [
        {
            "type": "text",
            "text": "A long document.",
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        },
        {"type": "text", "text": "Summarise it."},
    ]
    assert sent["messages"][2]["content"] == [
        {"type": "text", "text": "Shorter.", "cache_control": ephemeral}
    ]
    assert sent["tools"][0]["cache_control"] == ephemeral


def test_cache_control_reaches_anthropic_untouched_through_messages_passthrough(
    gateway: Gateway, api_key: str, fake_anthropic: FakeAnthropic
) -> None:
    block: Any = {
        "type": "text",
        "text": "A long document.",
        "cache_control": {"type": "ephemeral"},
    }
    claude(gateway, api_key).messages.create(
        model="anthropic/claude-fake",
        max_tokens=100,
        system=[block],
        messages=[{"role": "user", "content": [block]}],
    )
    sent = fake_anthropic.last_request("claude-fake")["body"]
    assert sent["system"] == [block] and sent["messages"][0]["content"] == [block]
