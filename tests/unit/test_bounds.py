"""Request bounds without sockets: the prompt estimate, context fitting per route policy, shape
counts, and the nesting depth read from raw JSON bytes."""

from __future__ import annotations

import tracemalloc
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway._core import json_nesting_depth
from gateway.errors import InvalidRequest
from gateway.routing.bounds import (
    ContextLengthExceeded,
    check_chat_bounds,
    estimate_prompt_tokens,
)
from gateway.routing.catalog import Catalog
from gateway.routing.router import resolve_chat
from gateway.schemas.decoding import MAX_JSON_DEPTH, decode_json
from gateway.schemas.openai import ChatRequest, decode_chat_request
from gateway.settings import BoundsSettings, load_settings
from loadtests.bench import pyref

SETTINGS = load_settings(None)
CATALOG = Catalog(SETTINGS, {})


def request(model: str, chars: int, **fields: object) -> ChatRequest:
    body = {"model": model, "messages": [{"role": "user", "content": "x" * chars}], **fields}
    return msgspec.convert(body, ChatRequest)


def test_the_estimate_is_characters_over_four_plus_framing_and_images() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    chat = msgspec.convert(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "x" * 10},
                {"role": "user", "content": [{"type": "text", "text": "y" * 7}, image]},
            ],
        },
        ChatRequest,
    )
    assert estimate_prompt_tokens(chat, 4.0) == 5 + 2 * 4 + 85  # ceil(17 / 4), 2 messages, 1 image


def test_a_named_model_must_hold_the_prompt_itself() -> None:
    # gpt-4-turbo: 128 000 tokens; 520 000 characters are about 130 000
    with pytest.raises(ContextLengthExceeded) as caught:
        resolve_chat(CATALOG, request("openai/gpt-4-turbo", 520_000))
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.status == 400
    assert caught.value.envelope()["error"] == {
        "type": "invalid_request",
        "message": caught.value.message,
        "param": "messages",
        "code": "context_length_exceeded",
    }
    assert [e.model.id for e in resolve_chat(CATALOG, request("openai/gpt-4-turbo", 500_000))]


def test_the_limit_is_inclusive_and_counts_only_the_output_asked_for() -> None:
    # 511 980 characters: 127 995 tokens + 4 of framing = 127 999, one below 128 000
    assert resolve_chat(CATALOG, request("openai/gpt-4-turbo", 511_980))
    assert resolve_chat(CATALOG, request("openai/gpt-4-turbo", 511_980, max_tokens=1))
    with pytest.raises(ContextLengthExceeded):
        resolve_chat(CATALOG, request("openai/gpt-4-turbo", 511_980, max_tokens=2))
    with pytest.raises(ContextLengthExceeded):
        resolve_chat(CATALOG, request("openai/gpt-4-turbo", 400_000, max_completion_tokens=30_000))


def test_the_requests_own_fallbacks_may_serve_what_the_named_model_cannot_hold() -> None:
    # 600 000 characters: past gpt-4-turbo's 128K, within claude-sonnet-4's 200K
    chain = resolve_chat(
        CATALOG, request("openai/gpt-4-turbo", 600_000, models=["anthropic/claude-sonnet-4"])
    )
    assert [e.model.id for e in chain] == ["anthropic/claude-sonnet-4"]


def test_klawd_auto_looks_for_a_target_that_fits() -> None:
    # 1 000 000 characters (250 000 tokens): only gemini-2.0-flash's 1M context holds them
    chosen = resolve_chat(CATALOG, request("klawd/auto", 1_000_000))
    assert [e.model.id for e in chosen] == ["google/gemini-2.0-flash"]
    with pytest.raises(ContextLengthExceeded):
        resolve_chat(CATALOG, request("klawd/auto", 5_000_000))
    without_google = Catalog(SETTINGS, {"google": "no key"})
    with pytest.raises(ContextLengthExceeded) as caught:
        resolve_chat(without_google, request("klawd/auto", 1_000_000))
    assert "the largest of its models" in caught.value.message


def test_an_ordered_route_skips_targets_that_cannot_hold_the_prompt() -> None:
    # klawd/standard: claude-sonnet-4 (200K), then gpt-4-turbo (128K)
    both = resolve_chat(CATALOG, request("klawd/standard", 100_000))
    assert [e.model.id for e in both] == ["anthropic/claude-sonnet-4", "openai/gpt-4-turbo"]
    one = resolve_chat(CATALOG, request("klawd/standard", 600_000))
    assert [e.model.id for e in one] == ["anthropic/claude-sonnet-4"]


def test_unknown_context_and_the_switch_turn_the_check_off() -> None:
    entry = CATALOG.entries["openai/gpt-4-turbo"]
    unknown = msgspec.structs.replace(
        entry, model=msgspec.structs.replace(entry.model, context_length=0)
    )
    huge = request("openai/gpt-4-turbo", 2_000_000)
    assert check_chat_bounds(huge, [unknown], BoundsSettings()) == [unknown]
    assert check_chat_bounds(huge, [entry], BoundsSettings(check_context=False)) == [entry]
    with pytest.raises(ContextLengthExceeded):
        check_chat_bounds(huge, [entry], BoundsSettings())


def test_token_counting_resolves_without_bounds() -> None:
    assert resolve_chat(CATALOG, request("openai/gpt-4-turbo", 2_000_000), bounded=False)


@pytest.mark.parametrize(
    ("fields", "setting", "param"),
    [
        ({"messages": [{"role": "user", "content": "a"}] * 11}, "max_messages", "messages"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * 6}] * 2},
            "max_content_parts",
            "messages",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}] * 11},
            "max_tools",
            "tools",
        ),
        ({"stop": ["a", "b", "c"]}, "max_stop_sequences", "stop"),
    ],
)
def test_counts_past_a_bound_are_refused_naming_the_setting(
    fields: dict[str, Any], setting: str, param: str
) -> None:
    bounds = BoundsSettings(
        max_messages=10, max_content_parts=10, max_tools=10, max_stop_sequences=2
    )
    body = {"model": "openai/gpt-4-turbo", "messages": [{"role": "user", "content": "a"}]}
    chat = msgspec.convert(body | fields, ChatRequest)
    with pytest.raises(InvalidRequest) as caught:
        check_chat_bounds(chat, [CATALOG.entries["openai/gpt-4-turbo"]], bounds)
    assert caught.value.code == "request_too_complex"
    assert caught.value.param == param
    assert f"bounds.{setting}" in caught.value.message
    at_the_bound = msgspec.convert(body, ChatRequest)
    assert check_chat_bounds(at_the_bound, [CATALOG.entries["openai/gpt-4-turbo"]], bounds)


# -- nesting depth of raw JSON ------------------------------------------------------------------
def reference_depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((reference_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((reference_depth(v) for v in value), default=0)
    return 0


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.text(alphabet='[]{}"\\ab:,\n\u00e9'),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(alphabet='[]{}"\\k'), inner, max_size=4)
    ),
    max_leaves=40,
)


# Generation of nested values is slow on a loaded machine: that is not what is tested here.
@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(JSON)
def test_nesting_depth_matches_a_recursive_walk_whatever_the_strings_hold(value: object) -> None:
    """The Rust walk (no limit reached) and the pure-Python reference the benchmark runs
    against it (loadtests/bench/pyref.py) both count what a recursive walk of the value does;
    with a limit below the depth, the walk stops one past it."""
    depth = reference_depth(value)
    for body in (orjson.dumps(value), orjson.dumps(value, option=orjson.OPT_INDENT_2)):
        assert json_nesting_depth(body, 1000) == depth
        assert pyref.nesting_depth(body) == depth
        if depth > 1:
            assert json_nesting_depth(body, depth - 2) == depth - 1


def test_decoding_refuses_a_body_one_level_past_the_bound() -> None:
    def body(depth: int) -> bytes:
        return (
            b'{"model":"m","messages":[{"role":"user","content":"a"}],"x":'
            + b"[" * (depth - 1)
            + b"]" * (depth - 1)
            + b"}"
        )

    assert decode_chat_request(body(MAX_JSON_DEPTH)).model == "m"
    with pytest.raises(InvalidRequest, match="deeper than 64 levels"):
        decode_chat_request(body(MAX_JSON_DEPTH + 1))


def test_the_shortest_body_one_level_past_the_bound_is_refused() -> None:
    """The check is skipped only for bodies too short to nest that deep: the shortest that
    does (only brackets) is read and refused."""
    deep = b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)
    with pytest.raises(InvalidRequest, match="deeper than 64 levels"):
        decode_json(msgspec.json.Decoder(), deep)
    assert decode_json(msgspec.json.Decoder(), deep[1:-1]) is not None


def test_refusing_megabytes_of_tiny_messages_stays_within_twenty_times_the_body() -> None:
    """Memory is bounded by the body-size limit: decoding allocates in proportion to the body
    (about 18 times for the smallest messages, loadtests/bench/bounds_bench.py), and nothing
    past the decode and a count runs before the refusal."""
    one = b'{"role":"user","content":"a"},'
    body = b'{"model":"openai/gpt-4-turbo","messages":[' + one * 100_000 + one[:-1] + b"]}"
    tracemalloc.start()
    try:
        with pytest.raises(InvalidRequest, match=r"bounds\.max_messages"):
            resolve_chat(CATALOG, decode_chat_request(body))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * len(body)
