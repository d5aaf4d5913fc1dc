"""Bad input gets a clear error and never a 500: valid requests of each API with a field
replaced by any JSON value, removed or added, and their text cut, given a key twice or a key
escaped, sent to the running gateway (every provider behind it a loopback fake). Whatever the
gateway answers, it is not a failure of its own (500, `internal_error`), an error is the JSON
envelope, and a stream it accepts ends whole. The fast paths (Rust scans of the body and the
answer, gateway/providers/openai.py) hand anything unusual to the reference path: this is where
a gap between the two would show as a 500."""

from __future__ import annotations

import time
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


def test_after_the_fuzzed_requests_each_api_still_serves_the_fuzz_key(
    gateway_on_each_store: Gateway, fuzz_client: httpx.Client
) -> None:
    """Nothing the examples did stays stuck: no circuit, rest, hold or in-flight count left
    behind (past the longest rest first: an upstream 429 without Retry-After rests a second)."""
    time.sleep(1.1)
    bodies = [(path, base) for path, base in BASES.items()]
    bodies += [
        ("/v1/chat/completions", BASES["/v1/chat/completions"] | {"model": model})
        for model in CHAT_MODELS
    ]
    for path, body in bodies:
        served = fuzz_client.post(f"{gateway_on_each_store.base_url}{path}", json=body)
        assert served.status_code == 200, (path, body, served.text[:500])


ADMIN_BASES: dict[str, dict[str, Any]] = {
    "POST /admin/accounts": {"name": "fuzz", "plan": "free", "credits_usd": 1.5},
    "PATCH /admin/accounts/{account}": {
        "plan": "pro",
        "credits_usd": 2.0,
        "limits": {"requests_per_minute": 10, "tokens_per_minute": 1000},
    },
    "POST /admin/accounts/{account}/keys": {
        "name": "k",
        "expires_at": "2030-01-01T00:00:00Z",
        "budget": {"day_micros": 5, "total_micros": 50},
        "limits": {},
        "models": ["openai/*"],
        "tags": {"team": "search"},
    },
    "PATCH /admin/keys/{key}": {"budget": {"month_micros": 7}, "models": [], "tags": {"a": "b"}},
}
ADMIN_FIELDS = [
    "name",
    "plan",
    "credits_usd",
    "limits",
    "expires_at",
    "budget",
    "models",
    "tags",
    "requests_per_minute",
]
USAGE_QUERIES = st.fixed_dictionaries(
    {},
    optional={
        "since": st.sampled_from(["2026-01-01", "2026-13-01", "x", "", "2026-12-04"]) | TEXT,
        "until": st.sampled_from(["2026-12-31", "1999-01-01", "2026-02-30"]) | TEXT,
        "group_by": st.sampled_from(["key", "model", "tag:team", "tag:", "nope"]) | TEXT,
    },
)


@st.composite
def admin_requests(draw: st.DrawFn) -> tuple[str, str, bytes | None, dict[str, str]]:
    if draw(st.integers(0, 4)) == 0:
        return "GET", "/admin/accounts/{account}/usage", None, draw(USAGE_QUERIES)
    route = draw(st.sampled_from(sorted(ADMIN_BASES)))
    body = orjson.loads(orjson.dumps(ADMIN_BASES[route]))
    for _ in range(draw(st.integers(0, 2))):
        nested = [k for k, v in body.items() if isinstance(v, dict)]
        target = body[draw(st.sampled_from(nested))] if nested and draw(st.booleans()) else body
        field = draw(st.sampled_from(ADMIN_FIELDS))
        if draw(st.integers(0, 3)) == 0:
            target.pop(field, None)
        else:
            target[field] = draw(JSON)
    method, path = route.split(" ", 1)
    text = msgspec.json.encode(body)
    if draw(st.integers(0, 5)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    return method, path, text, {}


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(admin_requests())
def test_fuzzed_admin_requests_never_get_a_failure_of_the_gateway(
    gateway_on_each_store: Gateway, request: tuple[str, str, bytes | None, dict[str, str]]
) -> None:
    method, path, body, query = request
    gateway = gateway_on_each_store
    with gateway.admin() as admin:
        if "{account}" in path or "{key}" in path:
            account = admin.post("/admin/accounts", json={"name": "fuzzed"}).json()["id"]
            key = admin.post(f"/admin/accounts/{account}/keys", json={}).json()["id"]
            path = path.format(account=account, key=key)
        response = admin.request(method, path, content=body, params=query)
    said = (method, path, body, query, response.status_code, response.text[:500])
    assert response.status_code != 500, said
    assert "Traceback" not in response.text, said
    if response.status_code >= 400:
        assert response.json()["error"]["type"] != "internal_error", said
