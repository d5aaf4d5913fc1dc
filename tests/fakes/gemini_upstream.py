"""A fake Gemini API on loopback: `POST /v1beta/models/{m}:generateContent` (a
GenerateContentResponse) and `:streamGenerateContent?alt=sse` (`data: <json>\\r\\n\\r\\n` events,
CRLF as Google sends them, no terminator event: the stream ends after a `finishReason`), and
errors `{"error":{"code","message","status","details"?}}` with their HTTP statuses.

Like the real API it refuses a request without `x-goog-api-key` (403 PERMISSION_DENIED) or without
`contents` (400 INVALID_ARGUMENT). Behaviour is chosen by the model in the URL:

    gemini-fake         text; streamed in awkward TCP pieces over three events
    gemini-tools        a functionCall part (finishReason STOP → tool_calls)
    gemini-length       finishReason MAX_TOKENS     gemini-safety      finishReason SAFETY
    gemini-blocked      no candidates, promptFeedback.blockReason
    gemini-embed        batchEmbedContents (`embedding_values`); the failing models fail it too
    gemini-error-event  streamed: one event, then `data: {"error": … UNAVAILABLE}`
    gemini-cut          streamed: one event, then the connection is cut (no finishReason)
    gemini-exhausted    429 RESOURCE_EXHAUSTED with RetryInfo retryDelay "21s"
    gemini-invalid      400 INVALID_ARGUMENT        gemini-bad-key     400 API_KEY_INVALID
    gemini-permission   403 PERMISSION_DENIED       gemini-not-found   404 NOT_FOUND
    gemini-internal     500 INTERNAL                gemini-unavailable 503 UNAVAILABLE
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from tests.fakes.openai_upstream import awkward_pieces
from tests.fakes.server import ThreadedServer, cut_connection

ANSWER = ["Hello", " from the", " fake gemini"]
TOOL_ARGS = {"city": "Paris", "unit": "c", "days": [1, 2]}
USAGE = {
    "promptTokenCount": 11,
    "candidatesTokenCount": 6,
    "totalTokenCount": 20,
    "thoughtsTokenCount": 3,
    "cachedContentTokenCount": 4,
}
FINISH = {"gemini-length": "MAX_TOKENS", "gemini-safety": "SAFETY"}
BAD_KEY_DETAILS = [
    {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "API_KEY_INVALID",
        "domain": "googleapis.com",
        "metadata": {"service": "generativelanguage.googleapis.com"},
    }
]
RETRY_DETAILS = [
    {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [{"quotaMetric": "generate_content_free_tier_requests"}],
    },
    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "21s"},
]
ERRORS: dict[str, tuple[int, str, str, list[dict[str, Any]] | None]] = {
    "gemini-exhausted": (
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details.",
        RETRY_DETAILS,
    ),
    "gemini-invalid": (
        400,
        "INVALID_ARGUMENT",
        "Invalid value at 'generation_config.temperature' (TYPE_FLOAT)",
        None,
    ),
    "gemini-bad-key": (
        400,
        "INVALID_ARGUMENT",
        "API key not valid. Please pass a valid API key.",
        BAD_KEY_DETAILS,
    ),
    "gemini-permission": (
        403,
        "PERMISSION_DENIED",
        "Method doesn't allow unregistered callers.",
        None,
    ),
    "gemini-not-found": (
        404,
        "NOT_FOUND",
        "models/gemini-not-found is not found for API version v1beta.",
        None,
    ),
    "gemini-internal": (500, "INTERNAL", "An internal error has occurred.", None),
    "gemini-unavailable": (503, "UNAVAILABLE", "The model is overloaded.", None),
}


def error_body(code: int, status: str, message: str, details: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details is not None:
        error["details"] = details
    return {"error": error}


def embedding_values(index: int, size: int) -> list[float]:
    """The fake's embedding of the index-th text (exact in float32)."""
    return [-index - j / 8 for j in range(size)]


def candidate(parts: list[dict[str, Any]], finish: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish is not None:
        out["finishReason"] = finish
    return out


def response(model: str) -> dict[str, Any]:
    if model == "gemini-blocked":
        return {
            "promptFeedback": {"blockReason": "SAFETY"},
            "usageMetadata": {"promptTokenCount": 11, "totalTokenCount": 11},
            "modelVersion": model,
            "responseId": "resp-blocked",
        }
    parts: list[dict[str, Any]] = [
        {"text": "thinking about it", "thought": True},
        {"text": "".join(ANSWER)},
    ]
    if model == "gemini-tools":
        parts = [{"functionCall": {"name": "get_weather", "args": TOOL_ARGS}}]
    return {
        "candidates": [candidate(parts, FINISH.get(model, "STOP"))],
        "usageMetadata": USAGE,
        "modelVersion": model,
        "responseId": "mDAmaL2BNvGhz7IPxeLb4QQ",
    }


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\r\n\r\n"


def stream_events(model: str) -> list[bytes]:
    common = {"modelVersion": model, "responseId": "mDAmaL2BNvGhz7IPxeLb4QQ"}
    first = {"promptTokenCount": 11, "totalTokenCount": 11}
    if model == "gemini-tools":
        return [
            sse(
                {"candidates": [candidate([{"text": "Checking."}], None)], "usageMetadata": first}
                | common
            ),
            sse(
                {
                    "candidates": [
                        candidate(
                            [{"functionCall": {"name": "get_weather", "args": TOOL_ARGS}}], "STOP"
                        )
                    ],
                    "usageMetadata": USAGE,
                }
                | common
            ),
        ]
    events = [
        sse(
            {"candidates": [candidate([{"text": ANSWER[0]}], None)], "usageMetadata": first}
            | common
        ),
        sse(
            {"candidates": [candidate([{"text": ANSWER[1]}], None)], "usageMetadata": first}
            | common
        ),
        sse(
            {
                "candidates": [candidate([{"text": ANSWER[2]}], FINISH.get(model, "STOP"))],
                "usageMetadata": USAGE,
            }
            | common
        ),
    ]
    return events


class FakeGemini(ThreadedServer):
    def setup(self, app: web.Application) -> None:
        app.router.add_post("/v1beta/models/{target}", self._generate)

    @property
    def base_url(self) -> str:
        return self.origin

    def last_request(self, model: str) -> dict[str, Any]:
        for recorded in reversed(self.requests):
            if recorded["model"] == model:
                return recorded
        raise AssertionError(f"the fake received no request for {model}")

    def _embed(self, model: str, body: dict[str, Any]) -> web.Response:
        """batchEmbedContents: one `values` per request item (`outputDimensionality` long,
        else 8; `embedding_values(i, n)`); no usage, as the documented response."""
        if model in ERRORS:
            status, rpc, message, details = ERRORS[model]
            return web.json_response(error_body(status, rpc, message, details), status=status)
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            return web.json_response(
                error_body(400, "INVALID_ARGUMENT", "* BatchEmbedContentsRequest.requests: empty"),
                status=400,
            )
        embeddings = []
        for index, item in enumerate(requests):
            if item.get("model") != f"models/{model}" or not item["content"]["parts"][0]["text"]:
                return web.json_response(
                    error_body(400, "INVALID_ARGUMENT", f"model of request {index} mismatches"),
                    status=400,
                )
            size = int(item.get("outputDimensionality") or 8)
            embeddings.append({"values": embedding_values(index, size)})
        return web.json_response({"embeddings": embeddings})

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["target"].partition(":")
        raw = await request.read()
        body = orjson.loads(raw) if raw else {}
        self.record(request, body, model=model, method=method, raw=raw)
        if method == "batchEmbedContents":
            return self._embed(model, body)
        if method not in ("generateContent", "streamGenerateContent"):
            return web.json_response(
                error_body(404, "NOT_FOUND", f"Method {method} not found."), status=404
            )
        if not request.headers.get("x-goog-api-key"):
            return web.json_response(
                error_body(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers."),
                status=403,
            )
        if not body.get("contents"):
            return web.json_response(
                error_body(
                    400,
                    "INVALID_ARGUMENT",
                    "* GenerateContentRequest.contents: contents is not specified",
                ),
                status=400,
            )
        if model in ERRORS:
            status, rpc, message, details = ERRORS[model]
            return web.json_response(error_body(status, rpc, message, details), status=status)
        if method == "generateContent":
            return web.json_response(response(model))
        if request.query.get("alt") != "sse":
            return web.json_response(
                error_body(400, "INVALID_ARGUMENT", "the fake only streams with alt=sse"),
                status=400,
            )
        stream = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await stream.prepare(request)
        events = stream_events(model)
        if model == "gemini-error-event":
            await stream.write(events[0])
            await stream.write(sse(error_body(503, "UNAVAILABLE", "The model is overloaded.")))
        elif model == "gemini-cut":
            await stream.write(events[0] + events[1][:15])
            return await cut_connection(request, stream)
        elif model == "gemini-blocked":
            await stream.write(sse(response(model)))
        else:
            for piece in awkward_pieces(events):
                await stream.write(piece)
        await stream.write_eof()
        return stream
