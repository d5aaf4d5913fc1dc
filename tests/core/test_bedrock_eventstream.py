"""The Rust reframer "bedrock" from Python against the pure-Python reference
(loadtests/bench/eventstream_ref.py): random ConverseStreams (random text with quotes, controls
and non-ASCII, tool input in random fragments, random chunking) give the same events; a
corrupted byte is `EventStreamError` (an `SseError`, mapped to 502 by the provider)."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import _core
from tests.fakes.bedrock_upstream import encode, event, exception

ROOT = Path(__file__).resolve().parents[2]


def _load_reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "eventstream_ref", ROOT / "loadtests/bench/eventstream_ref.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["eventstream_ref"] = module
    spec.loader.exec_module(module)
    return module


REF = _load_reference()
ARGS = ("bedrock/claude", "chatcmpl-x", 1700000000, True)


def stream(texts: list[str], fragments: list[str], stop: str) -> bytes:
    out = [event("messageStart", {"role": "assistant"})]
    out += [
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": t}}) for t in texts
    ]
    if fragments:
        start = {"toolUse": {"toolUseId": "tooluse_1", "name": "f"}}
        out.append(event("contentBlockStart", {"contentBlockIndex": 1, "start": start}))
        out += [
            event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": f}}})
            for f in fragments
        ]
    out.append(event("messageStop", {"stopReason": stop}))
    out.append(event("metadata", {"usage": {"inputTokens": 3, "outputTokens": 4}}))
    return b"".join(out)


def run(reframer: Any, chunks: list[bytes]) -> list[Any]:
    blob = b"".join(reframer.feed(c) for c in chunks) + reframer.finish()
    assert blob.endswith(b"data: [DONE]\n\n")
    return [orjson.loads(e[6:]) for e in blob.split(b"\n\n") if e.startswith(b"data: {")]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=100, deadline=None)
@given(
    texts=st.lists(st.text(min_size=0, max_size=12), max_size=8),
    fragments=st.lists(st.text(min_size=1, max_size=6), max_size=5),
    stop=st.sampled_from(["end_turn", "tool_use", "max_tokens", "guardrail_intervened"]),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=10),
)
def test_rust_and_the_python_reference_give_the_same_events(
    texts: list[str], fragments: list[str], stop: str, cuts: list[int]
) -> None:
    data = stream(texts, fragments, stop)
    chunks = split(data, cuts)
    rust = run(_core.Reframer("bedrock", *ARGS), chunks)
    reference = run(REF.BedrockRef(*ARGS), chunks)
    assert rust == reference


@pytest.mark.parametrize("position", [0, 5, 9, 30, -1])
def test_a_corrupted_byte_is_an_event_stream_error(position: int) -> None:
    data = bytearray(stream(["hi"], [], "end_turn"))
    data[position] ^= 0x40
    reframer = _core.Reframer("bedrock", *ARGS)
    with pytest.raises(_core.EventStreamError):
        reframer.feed(bytes(data))
        reframer.finish()
    assert issubclass(_core.EventStreamError, _core.SseError)


def test_an_exception_message_is_reported_and_ends_the_output() -> None:
    reframer = _core.Reframer("bedrock", *ARGS)
    out = reframer.feed(
        event("messageStart", {"role": "assistant"})
        + exception("modelStreamErrorException", "The model failed.")
        + event("messageStop", {"stopReason": "end_turn"})
    )
    assert reframer.upstream_error == ("modelStreamErrorException", "The model failed.")
    assert b'finish_reason":"stop' not in out
    assert not reframer.done


def test_a_message_with_no_headers_is_ignored() -> None:
    reframer = _core.Reframer("bedrock", *ARGS)
    assert reframer.feed(encode({}, b"{}")) == b""
