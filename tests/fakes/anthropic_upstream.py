"""A fake Anthropic Messages API (`POST /v1/messages`) on loopback, byte for byte the documented
wire format: message JSON, `event: <name>\\ndata: <json>\\n\\n` streams (message_start, ping,
content_block_start/delta/stop, message_delta, message_stop, error) and error bodies
`{"type":"error","error":{"type","message"},"request_id"}` with Anthropic's statuses.

Like the real API it refuses a request without a key (`x-api-key`, or a bearer token: 401),
without `anthropic-version` (400), or without `max_tokens` / `messages` (400). Behaviour is
chosen by the upstream model name:

    claude-fake        text; usage with cache writes and reads; streamed in awkward TCP pieces
    claude-tools       a tool_use block; streamed: input_json_delta in many fragments
    claude-length      stop_reason max_tokens       claude-stop-seq   stop_reason stop_sequence
    claude-refusal     stop_reason refusal
    claude-error-event streamed: some text, then `event: error` overloaded_error
    claude-cut         streamed: some text, then the connection is cut (no message_stop)
    claude-hold        streamed: its first events, then nothing until the client leaves (30 s at
                       most): a stream held open
    claude-overloaded  529 overloaded_error         claude-rate-limit 429 + retry-after: 13
    claude-invalid     400 invalid_request_error    claude-auth       401 (message holds the key)
    claude-permission  403 permission_error         claude-not-found  404 not_found_error
    claude-too-large   413 request_too_large        claude-api-error  500 api_error

`POST /v1/messages/count_tokens` answers `{"input_tokens": COUNTED_TOKENS}` (the failing models
fail it the same way).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.openai_upstream import awkward_pieces
from tests.fakes.server import ThreadedServer, cut_connection
from tests.live_bound import running_deadline

COUNTED_TOKENS = 123
ANSWER = ["Hello", " from", " the fake", " claude"]
TOOL_FRAGMENTS = ['{"ci', 'ty": "Par', "is", '", "unit"', ': "c"', ', "days": [1, ', "2]}"]
TOOL_INPUT = {"city": "Paris", "unit": "c", "days": [1, 2]}
USAGE = {
    "input_tokens": 10,
    "cache_creation_input_tokens": 5,
    "cache_read_input_tokens": 20,
    "output_tokens": 7,
}
STOP_REASONS = {
    "claude-length": "max_tokens",
    "claude-stop-seq": "stop_sequence",
    "claude-refusal": "refusal",
    "claude-tools": "tool_use",
}
ERRORS: dict[str, tuple[int, str, str]] = {
    "claude-overloaded": (529, "overloaded_error", "Overloaded"),
    "claude-rate-limit": (
        429,
        "rate_limit_error",
        "Number of request tokens has exceeded your per-minute rate limit",
    ),
    "claude-invalid": (
        400,
        "invalid_request_error",
        "messages.0.content.0.image.source.base64: image exceeds 5 MB maximum",
    ),
    "claude-permission": (
        403,
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    "claude-not-found": (404, "not_found_error", "model: claude-not-found"),
    "claude-too-large": (413, "request_too_large", "Request exceeds the maximum allowed size."),
    "claude-api-error": (500, "api_error", "Internal server error"),
}


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
    }


def event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {orjson.dumps(data).decode()}\n\n".encode()


def message(model: str) -> dict[str, Any]:
    stop_reason = STOP_REASONS.get(model, "end_turn")
    content: list[dict[str, Any]] = [{"type": "text", "text": "".join(ANSWER)}]
    if model == "claude-tools":
        content = [
            {"type": "text", "text": "Let me check."},
            {
                "type": "tool_use",
                "id": "toolu_01A09q90qw90lq917835lq9",
                "name": "get_weather",
                "input": TOOL_INPUT,
            },
        ]
    return {
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": "END" if stop_reason == "stop_sequence" else None,
        "usage": USAGE,
    }


def stream_events(model: str) -> list[bytes]:
    start = message(model) | {"content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = USAGE | {"output_tokens": 1}
    events = [event("message_start", {"type": "message_start", "message": start})]
    events.append(event("ping", {"type": "ping"}))
    events.append(
        event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
    )
    words = ["Let me check."] if model == "claude-tools" else ANSWER
    for word in words:
        events.append(
            event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": word},
                },
            )
        )
    events.append(event("content_block_stop", {"type": "content_block_stop", "index": 0}))
    if model == "claude-tools":
        events.append(
            event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 1,
                    "content_block": {
                        "type": "tool_use",
                        "id": "toolu_01A09q90qw90lq917835lq9",
                        "name": "get_weather",
                        "input": {},
                    },
                },
            )
        )
        for fragment in ["", *TOOL_FRAGMENTS]:
            events.append(
                event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 1,
                        "delta": {"type": "input_json_delta", "partial_json": fragment},
                    },
                )
            )
        events.append(event("content_block_stop", {"type": "content_block_stop", "index": 1}))
    stop_reason = STOP_REASONS.get(model, "end_turn")
    events.append(
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": stop_reason,
                    "stop_sequence": "END" if stop_reason == "stop_sequence" else None,
                },
                "usage": {"output_tokens": USAGE["output_tokens"]},
            },
        )
    )
    events.append(event("message_stop", {"type": "message_stop"}))
    return events


class FakeAnthropic(ThreadedServer):
    def setup(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)

    @property
    def base_url(self) -> str:
        return self.origin

    def last_request(self, model: str) -> dict[str, Any]:
        for recorded in reversed(self.requests):
            if recorded["body"].get("model") == model:
                return recorded
        raise AssertionError(f"the fake received no request for {model}")

    async def _count_tokens(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = orjson.loads(raw)
        self.record(request, body, raw=raw)
        if not (request.headers.get("x-api-key") or request.headers.get("authorization")):
            return web.json_response(
                error_body("authentication_error", "x-api-key header is required"), status=401
            )
        if "max_tokens" in body or not body.get("messages"):
            return web.json_response(
                error_body("invalid_request_error", "count_tokens takes messages, no max_tokens"),
                status=400,
            )
        if body["model"] in ERRORS:
            status, error_type, text = ERRORS[body["model"]]
            return web.json_response(error_body(error_type, text), status=status)
        return web.json_response({"input_tokens": COUNTED_TOKENS})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = orjson.loads(raw)
        self.record(request, body, raw=raw, head=request.raw_headers)
        # The API reads the key from x-api-key; recent SDKs send it as a bearer token instead.
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        key = request.headers.get("x-api-key") or bearer
        if not key:
            return web.json_response(
                error_body("authentication_error", "x-api-key header is required"), status=401
            )
        if not request.headers.get("anthropic-version"):
            return web.json_response(
                error_body("invalid_request_error", "anthropic-version: header is required"),
                status=400,
            )
        for field in ("model", "max_tokens", "messages"):
            if field not in body:
                return web.json_response(
                    error_body("invalid_request_error", f"{field}: Field required"), status=400
                )
        model = body["model"]
        if model == "claude-auth":
            return web.json_response(
                error_body("authentication_error", f"invalid x-api-key {key}"), status=401
            )
        if model in ERRORS:
            status, error_type, text = ERRORS[model]
            headers = {"retry-after": "13"} if status == 429 else {}
            return web.json_response(error_body(error_type, text), status=status, headers=headers)
        if not body.get("stream"):
            return web.json_response(message(model), headers={"request-id": "req_fake"})
        response = web.StreamResponse(
            headers={
                "content-type": "text/event-stream; charset=utf-8",
                "cache-control": "no-cache",
            }
        )
        await response.prepare(request)
        events = stream_events(model)
        if model == "claude-error-event":
            for piece in events[:5]:
                await response.write(piece)
            await response.write(
                event(
                    "error",
                    {
                        "type": "error",
                        "error": {"type": "overloaded_error", "message": "Overloaded"},
                    },
                )
            )
        elif model == "claude-cut":
            await response.write(b"".join(events[:5]) + events[5][:20])
            return await cut_connection(request, response)
        elif model == "claude-hold":
            await response.write(b"".join(events[:4]))
            passed = running_deadline(30)
            while not passed():
                transport = request.transport
                if transport is None or transport.is_closing():
                    return response
                await asyncio.sleep(0.02)
        else:
            for piece in awkward_pieces(events):
                await response.write(piece)
        await response.write_eof()
        return response
