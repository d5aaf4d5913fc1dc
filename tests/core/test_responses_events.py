"""gateway._core's `openai_to_responses` (the gateway's OpenAI chunks → OpenAI Responses API
events) from Python: against the pure-Python reference (loadtests/bench/pyref_responses.py),
through the official `openai` SDK's own stream accumulator (which checks identities, indices and
the final response), the Gemini → OpenAI → Responses chain, and random bytes (only the two typed
errors may come out)."""

from __future__ import annotations

import importlib.util
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai._models import construct_type
from openai._types import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

from gateway import _core
from tests.core.test_differential import (
    EOL,
    ROOT,
    SETTINGS,
    TEXT,
    chunked,
    named_events,
    pyref,
    sse,
)
from tests.core.test_reframer import fixture, split

assert pyref  # loaded (as the module `pyref`) before the reference that imports it
_spec = importlib.util.spec_from_file_location(
    "pyref_responses", ROOT / "loadtests/bench/pyref_responses.py"
)
assert _spec is not None and _spec.loader is not None
pyref_responses = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pyref_responses)

FIELDS = orjson.dumps({"instructions": "Be brief.", "tools": [], "store": True}).decode()
ARGS = ("prov/m", "resp_x", 1700000000, True)


def events(out: bytes) -> list[dict[str, Any]]:
    """The data of each event (named_events'), its type checked against its name."""
    parsed = []
    for name, event in named_events(out):
        assert event["type"] == name
        parsed.append(event)
    return parsed


def rust(chunks: list[bytes]) -> tuple[bytes, Any]:
    r = _core.Reframer("openai_to_responses", *ARGS, response_fields=FIELDS)
    return b"".join(r.feed(c) for c in chunks) + r.finish(), r


def reference(chunks: list[bytes]) -> tuple[bytes, Any]:
    r = pyref_responses.ToResponsesRef(*ARGS, response_fields=FIELDS)
    return b"".join(r.feed(c) for c in chunks) + r.finish(), r


def accumulate(parsed: list[dict[str, Any]]) -> Any:
    """What the official SDK's ResponseStream makes of the events (its final response)."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=[], text_format=omit)
    for data in parsed:
        state.handle_event(construct_type(type_=ResponseStreamEvent, value=data))  # type: ignore[arg-type]
    return state._completed_response


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    base = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def openai_chunks(
    texts: list[str], calls: list[list[str]], finish: str, usage: tuple[int, int, int]
) -> list[tuple[str | None, Any]]:
    evs: list[tuple[str | None, Any]] = [(None, chunk({"role": "assistant", "content": ""}))]
    evs += [(None, chunk({"content": t})) for t in texts]
    for i, fragments in enumerate(calls):
        start = {"index": i, "id": f"call_{i}", "type": "function"}
        start["function"] = {"name": f"f{i}", "arguments": ""}  # type: ignore[assignment]
        evs.append((None, chunk({"tool_calls": [start]})))
        evs += [
            (None, chunk({"tool_calls": [{"index": i, "function": {"arguments": f}}]}))
            for f in fragments
        ]
    evs.append((None, chunk({}, finish)))
    p, c, cached = usage
    u = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
    u["prompt_tokens_details"] = {"cached_tokens": cached}  # type: ignore[assignment]
    u["cache_creation_input_tokens"] = cached + 1
    evs.append((None, {**chunk({}), "choices": [], "usage": u}))
    return evs


@SETTINGS
@given(
    texts=st.lists(TEXT, max_size=6),
    calls=st.lists(st.lists(TEXT, max_size=4), max_size=3),
    finish=st.sampled_from(["stop", "length", "tool_calls", "content_filter"]),
    usage=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10)),
    eol=EOL,
    cuts=st.lists(st.integers(0), max_size=8),
)
def test_matches_reference_and_the_sdk_accumulates_it(
    texts: list[str],
    calls: list[list[str]],
    finish: str,
    usage: tuple[int, int, int],
    eol: str,
    cuts: list[int],
) -> None:
    data = sse(openai_chunks(texts, calls, finish, usage), eol) + f"data: [DONE]{eol}{eol}".encode()
    chunks = chunked(data, cuts)
    (out, r), (expected, ref) = rust(chunks), reference(chunks)
    parsed = events(out)
    assert parsed == events(expected)
    assert (r.content_chars, r.finish_reason, r.done) == (
        ref.content_chars,
        ref.finish_reason,
        ref.done,
    )
    assert [e["sequence_number"] for e in parsed] == list(range(len(parsed)))
    if finish in ("length", "content_filter"):
        assert parsed[-1]["type"] == "response.incomplete"
        return
    final = accumulate(parsed)
    assert final.output_text == "".join(texts)
    arguments = [item.arguments for item in final.output if item.type == "function_call"]
    assert arguments == ["".join(c) for c in calls]
    assert final.usage.input_tokens_details.cached_tokens == usage[2]
    assert final.usage.input_tokens_details.cache_write_tokens == usage[2] + 1


def test_gemini_stream_reaches_responses_events_through_two_reframers() -> None:
    gemini = _core.Reframer("gemini", "google/g", "resp_x", 0, True)
    chunks = split(fixture("gemini_text_function_call"), [17, 400, 401])
    openai_chunks_out = b"".join(gemini.feed(c) for c in chunks) + gemini.finish()
    out, r = rust([openai_chunks_out])
    final = accumulate(events(out))
    assert final.output_text
    assert [i.type for i in final.output][-1] == "function_call"
    assert r.done


@SETTINGS
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0), max_size=6))
def test_random_bytes_only_raise_the_typed_errors(data: bytes, cuts: list[int]) -> None:
    r = _core.Reframer("openai_to_responses", *ARGS, max_event_bytes=256)
    try:
        for piece in split(data, cuts):
            out = r.feed(piece)
            assert out == b"" or (out.startswith(b"event: response.") and out.endswith(b"\n\n"))
        r.finish()
    except (_core.SseError, _core.UpstreamStreamError):
        pass


def test_response_fields_that_are_not_an_object_are_refused() -> None:
    with pytest.raises(ValueError, match="JSON object"):
        _core.Reframer("openai_to_responses", *ARGS, response_fields="[]")
