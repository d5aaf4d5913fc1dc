"""Answers shaped otherwise than documented are read as far as they can be, never with an
exception of the reader's own (tests/integration/test_fuzzed_answers.py found each of these as
a 500)."""

from __future__ import annotations

from gateway.billing import TokenUsage
from gateway.providers import anthropic, bedrock_converse, gemini


def test_a_stop_reason_that_is_not_a_string_is_no_reason() -> None:
    assert anthropic.finish_reason(["end_turn"]) == "stop"
    assert anthropic.finish_reason("max_tokens") == "length"
    assert gemini.finish_reason({"x": 1}, False) == "stop"
    assert gemini.finish_reason(["SAFETY"], True) == "tool_calls"
    assert gemini.finish_reason("SAFETY", False) == "content_filter"


def test_counts_that_are_not_counts_are_zero() -> None:
    assert anthropic.usage_of({"input_tokens": [1], "output_tokens": "2"}) == (TokenUsage(0, 0), 0)
    assert gemini.usage_of({"promptTokenCount": {}, "candidatesTokenCount": 4}) == (
        TokenUsage(0, 4, 0),
        0,
    )
    assert bedrock_converse.usage_of({"inputTokens": -3, "outputTokens": 2**70}) == (
        TokenUsage(0, 0, 0, 0),
        0,
    )


def test_an_error_body_of_another_shape_has_no_details() -> None:
    bodies: list[object] = [
        {"error": 0},
        {"error": {"details": "x"}},
        [],
        None,
        {"error": {"details": [1]}},
    ]
    for body in bodies:
        assert gemini.retry_delay(body) is None
        assert gemini._is_key_problem(body) is False
