"""Bad input gets a clear error and never a 500: valid requests of each API with a field
replaced by any JSON value, removed or added, and their text cut, given a key twice or a key
escaped, sent to the running gateway (every provider behind it a loopback fake). Whatever the
gateway answers, it is not a failure of its own (500, `internal_error`), an error is the JSON
envelope, and a stream it accepts ends whole. The fast paths (Rust scans of the body and the
answer, gateway/providers/openai.py) hand anything unusual to the reference path: this is where
a gap between the two would show as a 500."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Gateway

CHAT_MODELS = [
    "openai/gpt-fake",
    "openai/tools-fake",
    "anthropic/claude-fake",
    "google/gemini-fake",
]
BASES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "model": "openai/gpt-fake",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
    },
    "/v1/messages": {
        "model": "anthropic/claude-fake",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
    },
    "/v1/responses": {"model": "openai/gpt-fake", "input": "hi", "max_output_tokens": 5},
    "/v1/embeddings": {"model": "openai/embed-fake", "input": "hi"},
}
FIELDS = [
    "model",
    "messages",
    "max_tokens",
    "stream",
    "stream_options",
    "temperature",
    "tools",
    "tool_choice",
    "n",
    "models",
    "input",
    "max_output_tokens",
    "system",
    "response_format",
    "stop",
    "user",
    "metadata",
]
TEXT = st.text(max_size=12)
TOOL = st.fixed_dictionaries(
    {
        "type": st.just("function"),
        "function": st.fixed_dictionaries(
            {"name": st.from_regex(r"[a-z_]{1,10}", fullmatch=True)},
            optional={"description": TEXT, "parameters": st.just({"type": "object"})},
        ),
    }
)
# Values each field may well have: reaching past validation into the provider's paths.
VALID = {
    "max_tokens": st.integers(1, 50),
    "max_output_tokens": st.integers(16, 50),
    "temperature": st.floats(0, 2),
    "n": st.just(1),
    "stop": st.lists(TEXT, max_size=2) | TEXT,
    "user": TEXT,
    "metadata": st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True), TEXT, max_size=2),
    "tools": st.lists(TOOL, min_size=1, max_size=2),
    "tool_choice": st.sampled_from(["auto", "none"]),
    "response_format": st.just({"type": "json_object"}),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "models": st.lists(st.sampled_from(CHAT_MODELS), max_size=2),
    "system": TEXT,
    "content": TEXT,
    "name": st.from_regex(r"[a-z]{1,8}", fullmatch=True),
}
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)

# Past what the examples ask for in a run: every one reaches the provider, none is a 429.
UNLIMITED = {"requests_per_minute": 1_000_000, "requests_per_day": 10_000_000}


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes]:
    path = draw(st.sampled_from(sorted(BASES)))
    body = orjson.loads(orjson.dumps(BASES[path]))  # a copy of its own, nested lists too
    if path == "/v1/chat/completions":
        body["model"] = draw(st.sampled_from(CHAT_MODELS))
    if path != "/v1/embeddings" and draw(st.booleans()):
        body["stream"] = True
    message = body.get("messages", [{}])[0]
    for _ in range(draw(st.integers(0, 2))):
        where = draw(st.sampled_from(["top", "message"])) if "messages" in body else "top"
        target = body if where == "top" else message
        field = draw(st.sampled_from(FIELDS if where == "top" else ["role", "content", "name"]))
        change = draw(st.sampled_from(["replace", "drop", "unknown"]))
        if change == "drop":
            target.pop(field, None)
        elif change == "replace":
            valid = VALID.get(field)
            target[field] = draw(valid if valid is not None and draw(st.booleans()) else JSON)
        else:  # a field no API defines (passed on, or refused, as each API says)
            target[draw(st.text(min_size=1, max_size=10))] = draw(JSON)
    text = msgspec.json.encode(body)  # (orjson refuses integers past 64 bits)
    edit = draw(st.sampled_from(["none", "none", "cut", "twice", "escaped", "spaces"]))
    if edit == "cut":
        text = text[: draw(st.integers(0, len(text)))]
    elif edit == "twice":  # the model given twice, the second one wins for most parsers
        text = text.replace(b'{"model":', b'{"model":"openai/gpt-fake","model":', 1)
    elif edit == "escaped":  # a key written with an escape: the same key for a JSON parser
        text = text.replace(b'"model"', b'"mod\\u0065l"', 1)
    elif edit == "spaces":
        text = text.replace(b",", b" ,\n\t", 2).replace(b":", b" : ", 2)
    return path, text


def answers_without_failing(gateway: Gateway, client: httpx.Client, path: str, body: bytes) -> None:
    with client.stream("POST", f"{gateway.base_url}{path}", content=body) as response:
        whole = response.read()
    assert response.status_code != 500, (path, body, whole[:500])
    assert b"Traceback" not in whole
    if response.status_code >= 400:
        error = orjson.loads(whole)["error"]
        assert isinstance(error["type"], str) and isinstance(error["message"], str)
        assert error["type"] != "internal_error", (path, body, whole[:500])
    elif response.headers["content-type"].startswith("text/event-stream"):
        assert whole.endswith(b"\n\n"), (path, body, whole[-300:])  # every event whole
        assert b'"internal_error"' not in whole, (path, body, whole[-500:])


@pytest.fixture(scope="module")
def fuzz_client(gateway_on_each_store: Gateway) -> Any:
    key = gateway_on_each_store.new_key(credits_usd=1000.0, limits=UNLIMITED)
    with httpx.Client(
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
        timeout=20,
    ) as client:
        yield client


@settings(
    max_examples=800,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(requests())
def test_fuzzed_requests_never_get_a_failure_of_the_gateway(
    gateway_on_each_store: Gateway, fuzz_client: httpx.Client, request: tuple[str, bytes]
) -> None:
    """On the embedded store, then on Redis (the admission's arguments are Lua's numbers)."""
    path, body = request
    answers_without_failing(gateway_on_each_store, fuzz_client, path, body)
