"""A fake OpenAI-compatible upstream on loopback, speaking the real wire format byte for byte.

Behaviour is chosen by the upstream model name in the request body, so tests can run in any
order against one shared server:

    gpt-fake      text answer; streamed: role chunk, 3 content chunks, finish, usage chunk, [DONE]
                  (written in awkward TCP pieces: events split mid-JSON and several per write)
    tools-fake    streamed tool call whose arguments arrive in many fragments (not streamed: the
                  same call, whole)
    length-fake   text answer with finish_reason length; filter-fake: content_filter
    pause-fake    streamed: one event, then waits until the test releases it
    answer-pause-fake  not streamed: the answer (gpt-fake's) waits until the test releases it
    done-stall-fake  streamed: every event and [DONE], then the body's end waits until the
                  test releases it
    cut-fake      streamed: two events, then the connection is cut (no [DONE])
    error-event   streamed: one event, then `data: {"error": …}`
    rate-limit-event  streamed: one event, then a rate-limit `data: {"error": …}`
    fail-401      401 whose message contains the upstream key (must never reach the client)
    fail-429      429 with Retry-After: 7
    ratelimit-reset  429 with OpenAI's x-ratelimit-* headers (requests spent, reset 6m0s), no
                  Retry-After
    fail-500      500
    fail-400      400 with an upstream validation message
    garbage       200 with a body that is not JSON
    parallel-fake two parallel tool calls (get_weather Paris, get_time Rome); streamed, their
                  argument fragments interleave by `index` (0, 1, 0, 1, ...), as some
                  OpenAI-compatible servers send them
    stop-seq-fake with a `stop` list, stops on its first string as vLLM does: the text before
                  it, finish_reason stop and the choice's `stop_reason` naming the string
    cached-fake   usage reports a prompt-cache hit: prompt_tokens_details.cached_tokens 1920 of
                  2006 prompt tokens (OpenAI's automatic prompt caching)
    hang-headers  holds its headers back until the gateway lets go (HELD_S of running time at
                  most, then gpt-fake's answer); stall-stream: streamed, one event, then the
                  same hold, then the body's end (no [DONE]); slow-headers: gpt-fake's
                  answer, its headers held back 3 s

Embeddings (`POST /v1/embeddings`): `embed-fake` answers one vector per input (`dimensions`
long, else 8; `embedding_vector(i, n)`) as floats or, with encoding_format base64, as base64
little-endian float32s; usage counts one token per word (per token of a token array).
`fail-429` answers 429 with Retry-After: 7.

Responses (`POST /v1/responses`): gpt-fake and tools-fake as OpenAI's Responses API answers
them, whole or as typed events (tests/fakes/openai_responses.py).

Images (`POST /v1/images/generations`): `img-fake` answers n images as `url` (served at
`/files/img-{i}.png`) or `b64_json`, as the request's response_format asks.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import struct
import threading
import time
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.server import PNG_1X1
from tests.live_bound import polls_async, running_deadline

ANSWER_WORDS = ["Hello", " from", " the fake"]
HELD_S = 30  # hang-headers' and stall-stream's hold: the tests' gateways cut it (running time)


FINISH_REASONS = {"length-fake": "length", "filter-fake": "content_filter"}
TOOL_CALL = {
    "id": "call_abc",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'},
}


def embedding_vector(index: int, dimensions: int) -> list[float]:
    """The fake's embedding of the index-th input (exact in float32)."""
    return [index + j / 4 for j in range(dimensions)]


PARALLEL_CALLS = [
    ("call_w", "get_weather", ['{"ci', 'ty": "Pa', 'ris"}']),
    ("call_t", "get_time", ['{"zo', 'ne": "Europe/', "Rome", '"}']),
]
STOP_SEQ_TEXT = "1, 2, 3"  # stop-seq-fake's text before the stop string
CACHED_USAGE = {
    "prompt_tokens": 2006,
    "completion_tokens": 4,
    "total_tokens": 2010,
    "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}


def completion(model: str, stop: list[str] | None = None) -> dict[str, Any]:
    if model == "parallel-fake":
        answer = completion("gpt-fake") | {"model": model}
        calls = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": "".join(f)}}
            for i, n, f in PARALLEL_CALLS
        ]
        answer["choices"][0]["message"] = {
            "role": "assistant",
            "content": None,
            "tool_calls": calls,
        }
        answer["choices"][0]["finish_reason"] = "tool_calls"
        return answer
    if model == "stop-seq-fake" and stop:
        answer = completion("gpt-fake") | {"model": model}
        answer["choices"][0]["message"]["content"] = STOP_SEQ_TEXT
        answer["choices"][0]["stop_reason"] = stop[0]
        return answer
    if model == "cached-fake":
        return completion("gpt-fake") | {"model": model, "usage": CACHED_USAGE}
    if model == "big-answer-fake":  # ~8 MB of JSON
        answer = completion("gpt-fake") | {"model": model}
        answer["choices"][0]["message"]["content"] = "x" * 8_000_000
        return answer
    if model == "tools-fake":
        answer = completion("gpt-fake") | {"model": model}
        answer["choices"][0]["message"] = {
            "role": "assistant",
            "content": None,
            "tool_calls": [TOOL_CALL],
        }
        answer["choices"][0]["finish_reason"] = "tool_calls"
        return answer
    return {
        "id": "chatcmpl-upstream123",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(ANSWER_WORDS), "refusal": None},
                "logprobs": None,
                "finish_reason": FINISH_REASONS.get(model, "stop"),
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16},
    }


def chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-upstream123",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def usage_chunk(model: str) -> dict[str, Any]:
    usage = (
        CACHED_USAGE
        if model == "cached-fake"
        else {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}
    )
    return {
        "id": "chatcmpl-upstream123",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [],
        "usage": usage,
    }


def parallel_stream(model: str) -> list[bytes]:
    """Both calls start, then their fragments alternate by index."""
    events = [sse(chunk(model, {"role": "assistant", "content": None}))]
    for index, (call_id, name, _) in enumerate(PARALLEL_CALLS):
        call = {"index": index, "id": call_id, "type": "function"}
        call["function"] = {"name": name, "arguments": ""}
        events.append(sse(chunk(model, {"tool_calls": [call]})))
    longest = max(len(f) for _, _, f in PARALLEL_CALLS)
    for step in range(longest):
        for index, (_, _, fragments) in enumerate(PARALLEL_CALLS):
            if step < len(fragments):
                call = {"index": index, "function": {"arguments": fragments[step]}}
                events.append(sse(chunk(model, {"tool_calls": [call]})))
    events.append(sse(chunk(model, {}, "tool_calls")))
    events.append(sse(usage_chunk(model)))
    events.append(sse("[DONE]"))
    return events


def stop_seq_stream(model: str, stop: str, include_usage: bool) -> list[bytes]:
    """vLLM's shape: the finish chunk's choice carries `stop_reason` (the matched string)."""
    events = [sse(chunk(model, {"role": "assistant", "content": ""}))]
    events += [sse(chunk(model, {"content": part})) for part in ("1, 2", ", 3")]
    finish = chunk(model, {}, "stop")
    finish["choices"][0]["stop_reason"] = stop
    events.append(sse(finish))
    if include_usage:
        events.append(sse(usage_chunk(model)))
    events.append(sse("[DONE]"))
    return events


def sse(event: dict[str, Any] | str) -> bytes:
    data = event if isinstance(event, str) else orjson.dumps(event).decode()
    return f"data: {data}\n\n".encode()


def text_stream(model: str, include_usage: bool) -> list[bytes]:
    events = [sse(chunk(model, {"role": "assistant", "content": ""}))]
    events += [sse(chunk(model, {"content": word})) for word in ANSWER_WORDS]
    events.append(sse(chunk(model, {}, FINISH_REASONS.get(model, "stop"))))
    if include_usage:
        events.append(sse(usage_chunk(model)))
    events.append(sse("[DONE]"))
    return events


def tool_stream(model: str) -> list[bytes]:
    fragments = ['{"ci', 'ty": "Par', "is", '", "unit"', ': "c"}']
    events = [
        sse(
            chunk(
                model,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_abc",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ],
                },
            )
        )
    ]
    events += [
        sse(chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": f}}]}))
        for f in fragments
    ]
    events.append(sse(chunk(model, {}, "tool_calls")))
    events.append(sse(usage_chunk(model)))
    events.append(sse("[DONE]"))
    return events


def awkward_pieces(events: list[bytes]) -> list[bytes]:
    """Re-cut the byte stream so writes split events mid-JSON, mid-"\\n\\n", and merge others."""
    blob = b"".join(events)
    sizes = [7, 1, 60, 2, 150, 3, 333]
    pieces, at, i = [], 0, 0
    while at < len(blob):
        size = sizes[i % len(sizes)]
        pieces.append(blob[at : at + size])
        at += size
        i += 1
    return pieces


class FakeOpenAI:
    """Runs on its own event loop in a background thread; records every request it receives."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        """`tls`: serve https on localhost with this server context (the egress-proxy tests)."""
        self.tls = tls
        self.requests: list[dict[str, Any]] = []
        self.attempts: dict[str, int] = {}
        self.disconnected_at: dict[str, float] = {}
        self.stalls_ended = 0  # done-stall-fake bodies that ended (released or timed out)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._release = asyncio.Event()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/images/generations", self._images)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_get("/files/{name}", self._file)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    @property
    def base_url(self) -> str:
        if self.tls is not None:
            return f"https://localhost:{self.port}/v1"
        return f"http://127.0.0.1:{self.port}/v1"

    def release(self) -> None:
        self._loop.call_soon_threadsafe(self._release.set)

    @staticmethod
    async def _held_until_let_go(request: web.Request) -> None:
        """Until the gateway lets go of the request (its own timer cut it), at most HELD_S of
        this process's running time. A fixed pause (3 s, before) raced the gateway's 1 s timer
        after a stop of the machine longer than both: resumed together, the fake could answer
        first and the gateway serve what the test expects it to cut."""
        async for _ in polls_async(HELD_S, 0.02):
            transport = request.transport
            if transport is None or transport.is_closing():
                return

    def last_request(self, model: str) -> dict[str, Any]:
        for recorded in reversed(self.requests):
            if recorded["body"].get("model") == model:
                return recorded
        raise AssertionError(f"the fake received no request for {model}")

    # -- the endpoints ------------------------------------------------------------------------
    async def _images(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.requests.append({"headers": dict(request.headers), "body": body})
        if body.get("model") != "img-fake":
            return web.json_response(
                {"error": {"message": "Unknown model", "type": "invalid_request_error"}},
                status=404,
            )
        count = int(body.get("n") or 1)
        if body.get("response_format") == "b64_json":
            encoded = base64.b64encode(PNG_1X1).decode()
            data = [{"b64_json": encoded, "revised_prompt": body["prompt"]} for _ in range(count)]
        else:
            origin = f"http://127.0.0.1:{self.port}"
            data = [{"url": f"{origin}/files/img-{i}.png"} for i in range(count)]
        return web.json_response({"created": 1700000000, "data": data})

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.requests.append({"headers": dict(request.headers), "body": body})
        model = body.get("model", "")
        if model == "fail-429":
            return web.json_response(
                {"error": {"message": "Rate limit reached", "type": "requests"}},
                status=429,
                headers={"retry-after": "7"},
            )
        raw = body.get("input")
        if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int)):
            inputs: list[Any] = [raw]
        else:
            inputs = raw if isinstance(raw, list) else []
        if model != "embed-fake" or not inputs:
            return web.json_response(
                {"error": {"message": "bad embeddings request", "type": "invalid_request_error"}},
                status=400,
            )
        dimensions = int(body.get("dimensions") or 8)
        data = []
        for index in range(len(inputs)):
            vector = embedding_vector(index, dimensions)
            encoded: Any = vector
            if body.get("encoding_format") == "base64":
                encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(len(i.split()) if isinstance(i, str) else len(i) for i in inputs)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        from tests.fakes import openai_responses

        body = orjson.loads(await request.read())
        self.requests.append({"headers": dict(request.headers), "body": body, "path": "responses"})
        if body.get("model") not in ("gpt-fake", "tools-fake"):
            return web.json_response(
                {"error": {"message": "Unknown model", "type": "invalid_request_error"}},
                status=404,
            )
        if not body.get("stream"):
            return web.json_response(openai_responses.whole(body))
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for piece in awkward_pieces(openai_responses.events(body)):
            await response.write(piece)
        await response.write_eof()
        return response

    async def _file(self, request: web.Request) -> web.Response:
        return web.Response(body=PNG_1X1, content_type="image/png")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.requests.append({"headers": dict(request.headers), "body": body})
        model = body.get("model", "")
        stream = bool(body.get("stream"))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        if model == "fail-401":
            return web.json_response(
                {
                    "error": {
                        "message": f"Incorrect API key provided: {key}.",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                },
                status=401,
            )
        if model == "fail-429":
            return web.json_response(
                {"error": {"message": "Rate limit reached", "type": "requests"}},
                status=429,
                headers={"retry-after": "7"},
            )
        if model == "fail-500":
            return web.json_response(
                {"error": {"message": "boom", "type": "server_error"}}, status=500
            )
        if model == "ratelimit-reset":
            # as OpenAI answers a spent request budget: the reset headers, no Retry-After
            return web.json_response(
                {"error": {"message": "Rate limit reached for requests", "type": "requests"}},
                status=429,
                headers={
                    "x-ratelimit-limit-requests": "500",
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": "6m0s",
                    "x-ratelimit-limit-tokens": "30000",
                    "x-ratelimit-remaining-tokens": "29000",
                    "x-ratelimit-reset-tokens": "2s",
                },
            )
        if model == "fail-400":
            return web.json_response(
                {
                    "error": {
                        "message": "max_tokens is too large for this model",
                        "type": "invalid_request_error",
                        "param": "max_tokens",
                    }
                },
                status=400,
            )
        if model == "flaky":
            user = str(body.get("user"))
            self.attempts[user] = self.attempts.get(user, 0) + 1
            if self.attempts[user] <= 2:
                return web.json_response(
                    {"error": {"message": "overloaded", "type": "server_error"}},
                    status=503,
                    headers={"retry-after": "0"},
                )
        if model == "hang-headers":
            await self._held_until_let_go(request)
        if model == "slow-headers":
            await asyncio.sleep(3)
        if model == "garbage":
            return web.Response(body=b"<html>oops</html>", content_type="text/html")
        if model == "answer-pause-fake" and not stream:
            self._release.clear()
            await asyncio.wait_for(self._release.wait(), timeout=30)
        stop = body.get("stop")
        stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else None
        if not stream:
            return web.json_response(completion(model, stops))
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        if model == "tools-fake":
            for piece in awkward_pieces(tool_stream(model)):
                await response.write(piece)
        elif model == "parallel-fake":
            for piece in awkward_pieces(parallel_stream(model)):
                await response.write(piece)
        elif model == "stop-seq-fake" and stops:
            for piece in awkward_pieces(stop_seq_stream(model, stops[0], include_usage)):
                await response.write(piece)
        elif model == "pause-fake":
            events = text_stream(model, include_usage)
            await response.write(events[0])
            self._release.clear()
            await asyncio.wait_for(self._release.wait(), timeout=30)
            for event in events[1:]:
                await response.write(event)
        elif model == "done-stall-fake":
            # the whole stream, [DONE] included, then the body held open (no terminating
            # chunk) until the test releases it
            for event in text_stream(model, include_usage):
                await response.write(event)
            self._release.clear()
            try:
                await asyncio.wait_for(self._release.wait(), timeout=30)
            finally:
                self.stalls_ended += 1
        elif model == "hold-fake":
            await response.write(text_stream(model, include_usage)[0])
            passed = running_deadline(30)
            while not passed():
                transport = request.transport
                if transport is None or transport.is_closing():
                    self.disconnected_at[str(body.get("user"))] = time.monotonic()
                    return response
                await asyncio.sleep(0.02)
        elif model == "trickle":
            events = text_stream(model, include_usage)
            await response.write(events[0])
            for _ in range(12):
                await asyncio.sleep(0.4)
                await response.write(sse(chunk(model, {"content": "."})))
            for event in events[-2:]:
                await response.write(event)
        elif model == "flood-fake":
            # events as fast as the gateway takes them (bounded: 30 s), until it lets go
            await response.write(text_stream(model, include_usage)[0])
            filler = sse(chunk(model, {"content": "x" * 1000}))
            passed = running_deadline(30)
            try:
                while not passed():
                    await response.write(filler)
                    transport = request.transport
                    if transport is None or transport.is_closing():
                        raise ConnectionResetError
            except ConnectionError:
                self.disconnected_at[str(body.get("user"))] = time.monotonic()
                return response
        elif model == "stall-stream":
            await response.write(text_stream(model, include_usage)[0])
            await self._held_until_let_go(request)
        elif model == "cut-fake":
            events = text_stream(model, include_usage)
            await response.write(events[0] + events[1])
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.close()
            return response
        elif model == "error-event":
            events = text_stream(model, include_usage)
            await response.write(events[0])
            await response.write(
                sse({"error": {"message": "The server had an error", "type": "server_error"}})
            )
        elif model == "rate-limit-event":
            events = text_stream(model, include_usage)
            await response.write(events[0])
            await response.write(
                sse({"error": {"message": "Rate limit reached", "type": "rate_limit_exceeded"}})
            )
        else:
            for piece in awkward_pieces(text_stream(model, include_usage)):
                await response.write(piece)
        await response.write_eof()
        return response
