"""Whatever an upstream answers, the client gets a clear answer and the books stay writable:
valid OpenAI, Anthropic and Gemini answers and event streams with a field replaced by any JSON
(counts past 64 bits, negative, fractional), dropped or added, events repeated or dropped, the
body cut anywhere, sent in arbitrary chunks, or an error status, from a scripted loopback
upstream behind a gateway of its own. The client never gets a failure of the gateway (500,
`internal_error`), an error is the JSON envelope, a stream it accepts ends with a whole event,
and once the examples ran the gateway's log holds no traceback and no failed ledger write. The
readers of answers and streams (the Rust scans with their typed fallbacks: rust_core/src/reframe,
openai_body.rs) meet here every shape at once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import (
    UPSTREAM_KEY,
    Gateway,
    free_port,
    gateway_config,
    start_gateway,
    stop,
)
from tests.fakes.provider_config import PROVIDER_ENV, provider_config
from tests.live_bound import running_deadline

COUNT = st.integers(0, 50) | st.sampled_from([-1, 2**63, 2**70]) | st.floats(0, 1e20)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)

UPSTREAM_SECRETS = [secret.encode() for secret in [UPSTREAM_KEY, *PROVIDER_ENV.values()]]
ECHO = b"{{credentials}}"
CREDENTIAL_HEADERS = [
    "authorization",
    "api-key",
    "x-api-key",
    "x-goog-api-key",
    "x-amz-security-token",
]
MESSAGES = st.sampled_from(["no", "Incorrect API key provided: {{credentials}}"])
# Past what the examples ask for in a run: every one reaches the provider, none is a 429.
UNLIMITED = {"requests_per_minute": 1_000_000, "requests_per_day": 10_000_000}


class ScriptedUpstream:
    """Answers every POST with the script of the moment: a status, a content type and the body's
    pieces (each written and drained on its own: a chunk of its own on the wire); every GET
    with `get_scripts`' script for the longest path prefix that matches (a 404 if none). An
    `ECHO` in a piece becomes the credentials the request carried, as an upstream that names
    the key it refuses does."""

    def __init__(self) -> None:
        self.script: tuple[int, str, list[bytes]] = (200, "application/json", [b"{}"])
        self.get_scripts: dict[str, tuple[int, str, list[bytes]]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._answer)
        app.router.add_route("GET", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        if request.method == "POST":
            status, content_type, pieces = self.script
        else:
            found = [p for p in self.get_scripts if request.path.startswith(p)]
            script = self.get_scripts[max(found, key=len)] if found else None
            status, content_type, pieces = script or (404, "text/plain", [b"not found"])
        sent = " ".join(request.headers.get(name, "") for name in CREDENTIAL_HEADERS).encode()
        pieces = [piece.replace(ECHO, sent) for piece in pieces]
        response = web.StreamResponse(status=status, headers={"content-type": content_type})
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
        await response.write_eof()
        return response

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def openai_answer() -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def openai_events() -> list[dict[str, Any]]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-fake",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    usage = chunk({})
    usage["choices"] = []
    usage["usage"] = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    return [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "hel"}),
        chunk({"content": "lo"}),
        chunk({}, "stop"),
        usage,
    ]


def anthropic_answer() -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-fake",
        "content": [{"type": "text", "text": "hello"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 2},
    }


def anthropic_events() -> list[dict[str, Any]]:
    start = anthropic_answer() | {"content": [], "stop_reason": None}
    return [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hel"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 2},
        },
        {"type": "message_stop"},
    ]


def gemini_answer(text: str = "hello", finish: str | None = "STOP") -> dict[str, Any]:
    candidate: dict[str, Any] = {
        "content": {"role": "model", "parts": [{"text": text}]},
        "index": 0,
    }
    if finish:
        candidate["finishReason"] = finish
    return {
        "candidates": [candidate],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5},
        "modelVersion": "gemini-fake",
    }


def gemini_events() -> list[dict[str, Any]]:
    return [gemini_answer("hel", None), gemini_answer("lo")]


# The client's APIs: each reads the upstream's answer its own way (gateway/messages.py,
# gateway/responses/).
ROUTES = ["/v1/chat/completions", "/v1/messages", "/v1/responses"]
PROVIDERS = {
    "openai": ("openai/gpt-fake", openai_answer, openai_events),
    "anthropic": ("anthropic/claude-fake", anthropic_answer, anthropic_events),
    "google": ("google/gemini-fake", gemini_answer, gemini_events),
}


def fields_of(node: Any) -> Iterator[tuple[Any, Any]]:
    """Every (container, key or index) below `node`, depth first."""
    if isinstance(node, dict):
        for key, inner in node.items():
            yield node, key
            yield from fields_of(inner)
    elif isinstance(node, list):
        for index, inner in enumerate(node):
            yield node, index
            yield from fields_of(inner)


@st.composite
def mutated(draw: st.DrawFn, value: dict[str, Any]) -> dict[str, Any]:
    """`value` with up to two of its fields (at any depth) replaced, dropped or added."""
    for _ in range(draw(st.integers(0, 2))):
        paths = list(fields_of(value))
        if not paths:
            break
        parent, key = draw(st.sampled_from(paths))
        change = draw(st.sampled_from(["count", "json", "drop", "add"]))
        if change == "drop":
            del parent[key]
        elif change == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(JSON)
        else:
            parent[key] = draw(COUNT if change == "count" else JSON)
    return value


def encode(value: Any) -> bytes:
    return msgspec.json.encode(value)  # (orjson refuses integers past 64 bits)


def repeated_or_dropped(draw: st.DrawFn, items: list[Any]) -> list[Any]:
    """`items`, perhaps with one of them repeated or dropped (an event, a frame)."""
    if draw(st.booleans()):
        index = draw(st.integers(0, len(items) - 1))
        if draw(st.booleans()):
            items.insert(index, items[index])
        else:
            del items[index]
    return items


def pieces_of(draw: st.DrawFn, text: bytes) -> list[bytes]:
    """`text`, perhaps cut short, in up to seven pieces (each written as a chunk of its own)."""
    if draw(st.integers(0, 4)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=6)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    return [p for p in pieces if p]


@st.composite
def scripts(draw: st.DrawFn) -> tuple[str, bool, tuple[int, str, list[bytes]]]:
    provider = draw(st.sampled_from(sorted(PROVIDERS)))
    model, answer, events = PROVIDERS[provider]
    stream = draw(st.booleans())
    if draw(st.integers(0, 9)) == 0:  # an error status with some body
        status = draw(st.sampled_from([400, 401, 404, 429, 500, 503, 529]))
        body = encode(draw(mutated({"error": {"type": "x", "message": draw(MESSAGES)}})))
        return model, stream, (status, "application/json", [body])
    if not stream:
        text = encode(draw(mutated(answer())))
        content_type = "application/json"
    else:
        chosen = repeated_or_dropped(draw, [draw(mutated(event)) for event in events()])
        lines = []
        for event in chosen:
            name = f"event: {event.get('type')}\n" if provider == "anthropic" else ""
            lines.append(name.encode() + b"data: " + encode(event) + b"\n\n")
        if provider == "openai" and draw(st.booleans()):
            lines.append(b"data: [DONE]\n\n")
        text = b"".join(lines)
        if provider == "google" and draw(st.booleans()):
            text = text.replace(b"\n\n", b"\r\n\r\n")
        content_type = "text/event-stream"
    return model, stream, (200, content_type, pieces_of(draw, text))


@pytest.fixture(scope="module")
def scripted(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ScriptedUpstream, Gateway]]:
    upstream = ScriptedUpstream()
    upstream.start()
    url = f"http://127.0.0.1:{upstream.port}"
    directory = tmp_path_factory.mktemp("fuzzed-answers")
    port = free_port()
    config = directory / "klawd.toml"
    # No retries and no resting of a failing model: every example is one upstream call.
    extra = provider_config(url, url, url) + "\n[routing]\ncooldown_s = 0.01\n"
    gateway_config(config, port, f"{url}/v1", extra=extra)
    config.write_text(config.read_text().replace("attempts = 3", "attempts = 1", 1))
    running = start_gateway(config, port, PROVIDER_ENV)
    try:
        yield upstream, running
    finally:
        stop(running.process)
        upstream.stop()
    log_is_clean(directory / "gateway.log", UPSTREAM_SECRETS)


def log_is_clean(log_file: Path, secrets: list[bytes]) -> None:
    """After the examples: no traceback, no failed ledger write, no secret in the log."""
    log = log_file.read_text(errors="replace")
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]
    assert "usage flush failed" not in log
    assert not any(secret.decode() in log for secret in secrets), "a secret in the log"


def assert_clear(
    response: httpx.Response, whole: bytes, stream: bool, said: Any, secrets: list[bytes]
) -> None:
    """A clear answer: never a failure of the gateway or a secret; an error in the envelope;
    an accepted stream ending with a whole event."""
    assert response.status_code != 500, said
    assert not any(secret in whole for secret in secrets), said
    assert b"Traceback" not in whole, said
    if response.status_code >= 400:
        error = orjson.loads(whole)["error"]
        assert error["type"] != "internal_error", said
    elif stream:
        assert whole.endswith(b"\n\n"), said
        assert b'"internal_error"' not in whole, said


@pytest.fixture(scope="module")
def client(scripted: tuple[ScriptedUpstream, Gateway]) -> Iterator[httpx.Client]:
    key = scripted[1].new_key(credits_usd=1000.0, limits=UNLIMITED)
    with httpx.Client(headers={"authorization": f"Bearer {key}"}, timeout=30) as made:
        yield made


def each_model_serves(
    upstream: ScriptedUpstream, gateway: Gateway, answers: dict[str, bytes], route: str
) -> None:
    """Each model, given its plain answer (`answers`: model id -> body), serves it: before the
    fuzz, that its scripts reach the model; after it, that nothing the examples did stays
    stuck (a circuit's probe, a rest, a counter). Past the longest rest first: an upstream 429
    without a Retry-After rests its deployment a second, an open circuit 0.01 s."""
    time.sleep(1.1)
    key = gateway.new_key(credits_usd=10.0, limits=UNLIMITED)
    for model, answer in answers.items():
        upstream.script = (200, "application/json", [answer])
        body: dict[str, Any] = {"model": model}
        if route == "/v1/chat/completions":
            body["messages"] = [{"role": "user", "content": "hi"}]
        elif route == "/v1/embeddings":
            body["input"] = "hi"
        else:
            body |= {"prompt": "a cat", "response_format": "url"}
        served = gateway.post(key, body, route)
        assert served.status_code == 200, (model, served.text)


def plain_chat_answers() -> dict[str, bytes]:
    return {model: encode(answer()) for model, answer, _ in PROVIDERS.values()}


def test_each_model_serves_before_the_fuzz(scripted: tuple[ScriptedUpstream, Gateway]) -> None:
    each_model_serves(*scripted, plain_chat_answers(), "/v1/chat/completions")


@settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(scripts(), st.sampled_from(ROUTES))
def test_any_upstream_answer_gets_a_clear_answer(
    scripted: tuple[ScriptedUpstream, Gateway],
    client: httpx.Client,
    script: tuple[str, bool, tuple[int, str, list[bytes]]],
    route: str,
) -> None:
    upstream, gateway = scripted
    model, stream, upstream.script = script
    messages = [{"role": "user", "content": "hi"}]
    body: dict[str, Any] = {"model": model, "stream": stream}
    if route == "/v1/responses":
        body |= {"input": "hi", "max_output_tokens": 16}
    else:
        body |= {"messages": messages, "max_tokens": 16}
    with client.stream("POST", f"{gateway.base_url}{route}", json=body) as response:
        whole = response.read()
    said = (route, script, response.status_code, whole[-600:])
    assert_clear(response, whole, stream, said, UPSTREAM_SECRETS)


def ledger_rows(gateway: Gateway, account_id: str, requests: int) -> list[dict[str, Any]]:
    """The account's usage rows once its ledger holds `requests` requests (the ledger is
    written in batches: a bounded wait, not a timing assertion)."""
    passed = running_deadline(10)
    with gateway.admin() as admin:
        while True:
            rows: list[dict[str, Any]] = admin.get(f"/admin/accounts/{account_id}/usage").json()[
                "data"
            ]
            if rows and rows[0]["requests"] == requests:
                return rows
            assert not passed(), f"the ledger stopped writing: {rows}"
            time.sleep(0.1)


def test_an_answer_claiming_2_63_tokens_is_served_and_the_ledger_still_writes(
    scripted: tuple[ScriptedUpstream, Gateway],
) -> None:
    """Such a count is not one (billing.MAX_TOKEN_COUNT): counted as 0. Before, its cost overflowed
    SQLite's INTEGER and every later settlement of the worker failed with it, retried for good."""
    upstream, gateway = scripted
    with gateway.admin() as admin:
        account = admin.post("/admin/accounts", json={"name": "huge", "credits_usd": 10}).json()
        key = admin.post(f"/admin/accounts/{account['id']}/keys", json={}).json()["key"]
    huge = openai_answer()
    huge["usage"] = {"prompt_tokens": 2**63, "completion_tokens": 2, "total_tokens": 2**63 + 2}
    # A model the fuzz above does not use: its circuit and rests are its own.
    body = {"model": "openai/tools-fake", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {key}"}
    for answer in (huge, openai_answer()):
        upstream.script = (200, "application/json", [encode(answer)])
        served = httpx.post(
            f"{gateway.base_url}/v1/chat/completions", json=body, headers=headers, timeout=10
        )
        assert served.status_code == 200, served.text
    rows = ledger_rows(gateway, account["id"], requests=2)
    assert rows[0]["prompt_tokens"] == 3  # the huge answer's count taken as 0, the other's 3
    log = (gateway.config.parent / "gateway.log").read_text()
    assert "reported token counts that are not counts (prompt 9223372036854775808" in log


# Models of each provider that the fuzz above does not use (the same fake upstream): its
# scripted 429s rest the model they answered for until their Retry-After, which would answer
# a later request to that model with the gateway's own 429.
UNFUZZED_MODELS = {
    "openai": "openai/tools-fake",
    "anthropic": "anthropic/claude-cache-priced",
    "google": "google/gemini-cache-priced",
}


def with_float_counts(value: Any) -> Any:
    """`value` with every token count written as a float (12 as 12.0), as some servers do."""
    if isinstance(value, dict):
        return {
            k: float(v) if isinstance(v, int) and "oken" in k else with_float_counts(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [with_float_counts(v) for v in value]
    return value


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
def test_counts_written_as_floats_are_billed_as_counts(
    scripted: tuple[ScriptedUpstream, Gateway], provider: str, stream: bool
) -> None:
    """A count with no fraction written as a float (`3.0`) is a count, as `billing.count` says.
    Before, OpenAI's single answer billed it as 0 (served free) and every stream ended with a
    502 error event after its content (the Rust usage refused a float)."""
    upstream, gateway = scripted
    _, answer, events = PROVIDERS[provider]
    model = UNFUZZED_MODELS[provider]
    with gateway.admin() as admin:
        account = admin.post("/admin/accounts", json={"name": "floats", "credits_usd": 10}).json()
        key = admin.post(f"/admin/accounts/{account['id']}/keys", json={}).json()["key"]
    if stream:
        lines = [
            (f"event: {e.get('type')}\n" if provider == "anthropic" else "").encode()
            + b"data: " + encode(with_float_counts(e)) + b"\n\n"
            for e in events()
        ]  # fmt: skip
        if provider == "openai":
            lines.append(b"data: [DONE]\n\n")
        upstream.script = (200, "text/event-stream", lines)
    else:
        upstream.script = (200, "application/json", [encode(with_float_counts(answer()))])
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    served = gateway.post(key, body)
    assert served.status_code == 200, served.text
    assert b"error" not in served.content, served.content[-300:]
    rows = ledger_rows(gateway, account["id"], requests=1)
    assert (rows[0]["prompt_tokens"], rows[0]["completion_tokens"]) == (3, 2)


def embedding_answer() -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5]}],
        "model": "embed-fake",
        "usage": {"prompt_tokens": 1, "total_tokens": 1},
    }


@st.composite
def embedding_scripts(draw: st.DrawFn) -> tuple[int, str, list[bytes]]:
    text = encode(draw(mutated(embedding_answer())))
    if draw(st.integers(0, 4)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    status = draw(st.sampled_from([200, 200, 200, 400, 429, 500]))
    return status, "application/json", [text]


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(embedding_scripts())
def test_any_embeddings_answer_gets_a_clear_answer(
    scripted: tuple[ScriptedUpstream, Gateway],
    client: httpx.Client,
    script: tuple[int, str, list[bytes]],
) -> None:
    upstream, gateway = scripted
    upstream.script = script
    body = {"model": "openai/embed-fake", "input": "hi"}
    response = client.post(f"{gateway.base_url}/v1/embeddings", json=body)
    said = (script, response.status_code, response.text[:600])
    assert response.status_code != 500, said
    if response.status_code >= 400:
        assert response.json()["error"]["type"] != "internal_error", said


def test_each_model_still_serves_after_the_fuzz(
    scripted: tuple[ScriptedUpstream, Gateway],
) -> None:
    each_model_serves(*scripted, plain_chat_answers(), "/v1/chat/completions")
    answer = {"openai/embed-fake": encode(embedding_answer())}
    each_model_serves(*scripted, answer, "/v1/embeddings")
