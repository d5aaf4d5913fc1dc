"""A chained `gateway._core.Reframer` (`then="openai_to_responses"` or `"openai_to_anthropic"`:
the upstream's events → OpenAI chunks → a route's events in one call) against the two reframers
it replaced, each made as its route made it and driven as the gateway drove them
(gateway/api/translated.py over the provider's `ReframedStream`): at every split point of
recorded upstream streams (text, tool calls, an error event mid-stream, a stream cut off), the
same bytes, the same failure, the same event count and the same final response."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway import _core
from gateway.api.translated import OPENING
from tests.core.test_reframer import fixture

FIELDS = orjson.dumps({"instructions": "Be brief.", "store": True}).decode()
ARGS = ("prov/m", "resp_abc", 1700000000, True)
Seen = tuple[bytes, str | None, int | None, Any]


RESPONSES = "openai_to_responses"
MESSAGES = "openai_to_anthropic"


def second_stage(then: str) -> _core.Reframer:
    """The route's own reframer of the provider's chunks, as it made it (ResponseEvents,
    AnthropicEvents: the Messages route's with no `created` and no fields)."""
    if then == MESSAGES:
        return _core.Reframer(MESSAGES, ARGS[0], ARGS[1], 0, True)
    return _core.Reframer(RESPONSES, *ARGS, response_fields=FIELDS)


def two_reframers(kind: str, reads: list[bytes], then: str = RESPONSES) -> Seen:
    """The provider's reframer, then the route's (`then`) over each of its pieces: a failure
    of the first goes out after its events before it; one of the second sends none of that
    piece's; the second's end once the first ended whole."""
    first = _core.Reframer(kind, *ARGS)
    second = second_stage(then)
    out = [second.feed(OPENING)]
    for read in [*reads, None]:
        failure: str | None = None
        try:
            piece = first.feed(read) if read is not None else first.finish()
        except (_core.SseError, _core.UpstreamStreamError) as exc:
            piece, failure = first.before_error(), type(exc).__name__
        try:
            out.append(second.feed(piece))
        except _core.SseError:
            return b"".join(out), "TranslationError", second.events, second.final_response
        if failure is not None:
            return b"".join(out), failure, second.events, second.final_response
        if first.upstream_error is not None:
            return b"".join(out), "upstream error", second.events, second.final_response
    if first.finished():
        out.append(second.finish())
    return b"".join(out), None, second.events, second.final_response


def chained(kind: str, reads: list[bytes], then: str = RESPONSES) -> Seen:
    """One chained reframer, made as `HttpProvider.stream` makes it for the route's
    `RouteEvents` and driven as `ReframedStream` drives it."""
    fields = FIELDS if then == RESPONSES else "{}"
    r = _core.Reframer(kind, *ARGS, response_fields=fields, then=then)
    out = [r.opening()]
    for read in [*reads, None]:
        try:
            out.append(r.feed(read) if read is not None else r.finish())
        except (_core.SseError, _core.UpstreamStreamError) as exc:
            out.append(r.before_error())
            return b"".join(out), type(exc).__name__, r.events, r.final_response
        if r.upstream_error is not None:
            return b"".join(out), "upstream error", r.events, r.final_response
    return b"".join(out), None, r.events, r.final_response


CUT_OFF = fixture("anthropic_text_tool_use")[:-40]  # the stream ends before message_stop
CASES = [
    ("anthropic", fixture("anthropic_text_tool_use"), None),
    ("anthropic", fixture("bench_anthropic"), None),
    ("anthropic", fixture("anthropic_error"), "upstream error"),
    ("anthropic", CUT_OFF, "UpstreamStreamError"),
    ("openai", fixture("openai_tool_calls"), None),
    ("gemini", fixture("gemini_text_function_call"), None),
]


@pytest.mark.parametrize(("kind", "body", "failure"), CASES)
def test_a_chained_reframer_writes_what_two_reframers_wrote_at_every_split_point(
    kind: str, body: bytes, failure: str | None
) -> None:
    whole = two_reframers(kind, [body])
    assert whole[1] == failure
    assert whole[0].count(b"\n\n") == whole[2] > 2
    assert (whole[3] is not None) == (failure is None)
    for cut in range(len(body) + 1):
        reads = [body[:cut], body[cut:]]
        assert chained(kind, reads) == two_reframers(kind, reads) == whole, cut


MESSAGES_CASES = [
    *CASES,
    ("openai", fixture("openai_text_usage"), None),
    ("openai", fixture("bench_openai"), None),
    ("gemini", fixture("gemini_safety"), None),
]


@pytest.mark.parametrize(("kind", "body", "failure"), MESSAGES_CASES)
def test_a_messages_chain_writes_what_two_reframers_wrote_at_every_split_point(
    kind: str, body: bytes, failure: str | None
) -> None:
    """Into Anthropic events (the Messages route): no events are counted, no response kept."""
    whole = two_reframers(kind, [body], MESSAGES)
    assert whole[1] == failure
    assert whole[0].startswith(b"event: message_start\n") and whole[0].count(b"\n\n") >= 3
    assert (b"event: message_stop\n" in whole[0]) == (failure is None)
    assert whole[2:] == (None, None)
    for cut in range(len(body) + 1):
        reads = [body[:cut], body[cut:]]
        assert chained(kind, reads, MESSAGES) == two_reframers(kind, reads, MESSAGES) == whole, cut


def test_a_translation_failure_sends_none_of_its_read_s_events() -> None:
    """Arguments for a tool call whose item was closed (text began after it): the Responses
    stage cannot place them; the text delta of the same read is not sent either, as before."""

    def chunk(delta: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": delta}]}) + b"\n\n"

    call = {"index": 0, "id": "c", "function": {"name": "f", "arguments": ""}}
    reads = [
        chunk({"tool_calls": [call]}) + chunk({"content": "text"}),
        chunk({"content": " more"})
        + chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
        b"data: [DONE]\n\n",
    ]
    seen = chained("openai", reads)
    assert seen == two_reframers("openai", reads)
    assert seen[1] == "TranslationError" and b" more" not in seen[0]
    assert seen[2] == seen[0].count(b"\n\n")


def test_only_an_upstream_kind_chains_into_a_reader_of_openai_chunks() -> None:
    for kind, then in [("anthropic", "gemini"), ("openai_to_anthropic", "openai_to_responses")]:
        with pytest.raises(ValueError, match="cannot chain"):
            _core.Reframer(kind, *ARGS, then=then)
