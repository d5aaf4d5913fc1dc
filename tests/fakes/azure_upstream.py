"""A fake Azure OpenAI resource on loopback, speaking Azure's wire format.

`POST /openai/deployments/{deployment}/{chat/completions | embeddings | images/generations}
?api-version=…`. Like Azure it refuses a call without `api-version` (404 Resource not found), and
one without a valid `api-key` header or `Authorization: Bearer <Entra token>` (401, Azure's
`{"error": {"code": "401", "message": …}}`). Answers are the OpenAI fake's
(tests/fakes/openai_upstream.py) dressed as Azure dresses them: `prompt_filter_results` and
per-choice `content_filter_results`, and a first stream chunk with `choices: []` and an empty
`model`. Behaviour by deployment:

    gpt4o-prod       text (streamed: the prompt-filter chunk, role, words, finish, usage, [DONE])
    tools-prod       a tool call (streamed: its arguments in fragments)
    embed-prod       embeddings (openai_upstream.embedding_vector)
    dalle-prod       one image as b64_json
    throttled        429 with Retry-After: 4 and Azure's rate-limit message
    filtered         400 content_filter (Azure's content management policy)
    cut-prod         streamed: two chunks, then the connection is cut
    error-prod       streamed: a chunk, then `data: {"error": … server_error}`
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
from aiohttp import web

from tests.fakes import openai_upstream
from tests.fakes.openai_upstream import awkward_pieces, sse
from tests.fakes.server import PNG_1X1, ThreadedServer, cut_connection

API_KEY = "azure-SECRET-key-never-leak-3c1f"
ENTRA_TOKEN = "eyJ0eXAiOiJKV1Q.azure-entra-SECRET-never-leak"
FILTERS = {
    severity: {"filtered": False, "severity": "safe"}
    for severity in ("hate", "self_harm", "sexual", "violence")
}
PROMPT_FILTER = [{"prompt_index": 0, "content_filter_results": FILTERS}]


def azure_error(status: int, code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "param": None, "type": None}}


class FakeAzure(ThreadedServer):
    def setup(self, app: web.Application) -> None:
        app.router.add_post("/openai/deployments/{deployment}/{operation:.+}", self._handle)

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if request.headers.get("api-key") == API_KEY:
            return None
        if request.headers.get("authorization") == f"Bearer {ENTRA_TOKEN}":
            return None
        return web.json_response(
            azure_error(
                401,
                "401",
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure "
                "to provide a valid key for an active subscription and use a correct regional "
                "API endpoint for your resource.",
            ),
            status=401,
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        deployment = request.match_info["deployment"]
        operation = request.match_info["operation"]
        raw = await request.read()
        body: Any = orjson.loads(raw) if raw else {}
        self.record(request, body, deployment=deployment, operation=operation)
        if not request.query.get("api-version"):
            return web.json_response(
                {"error": {"code": "404", "message": "Resource not found"}}, status=404
            )
        refused = self._auth_error(request)
        if refused is not None:
            return refused
        if deployment == "throttled":
            return web.json_response(
                azure_error(
                    429,
                    "429",
                    "Requests to the ChatCompletions_Create Operation under Azure OpenAI API "
                    "version 2024-10-21 have exceeded token rate limit of your current OpenAI "
                    "S0 pricing tier. Please retry after 4 seconds.",
                ),
                status=429,
                headers={"retry-after": "4", "retry-after-ms": "4000"},
            )
        if deployment == "filtered":
            return web.json_response(
                azure_error(
                    400,
                    "content_filter",
                    "The response was filtered due to the prompt triggering Azure OpenAI's "
                    "content management policy.",
                ),
                status=400,
            )
        if operation == "embeddings":
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            data = [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": openai_upstream.embedding_vector(i, 8),
                }
                for i in range(len(inputs))
            ]
            usage = {"prompt_tokens": 5, "total_tokens": 5}
            return web.json_response({"object": "list", "data": data, "model": "", "usage": usage})
        if operation == "images/generations":
            image = {"b64_json": base64.b64encode(PNG_1X1).decode(), "revised_prompt": "a cat"}
            return web.json_response({"created": 1700000000, "data": [image]})
        if operation != "chat/completions":
            return web.json_response(
                {"error": {"code": "404", "message": "Resource not found"}}, status=404
            )
        model = "tools-fake" if deployment.startswith("tools") else "gpt-fake"
        if not body.get("stream"):
            answer = openai_upstream.completion(model) | {"model": "gpt-4o-2024-08-06"}
            answer["prompt_filter_results"] = PROMPT_FILTER
            for choice in answer["choices"]:
                choice["content_filter_results"] = FILTERS
            answer["usage"] = {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}
            return web.json_response(answer)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        events = (
            openai_upstream.tool_stream(model)
            if model == "tools-fake"
            else openai_upstream.text_stream(model, include_usage)
        )
        first = {
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": PROMPT_FILTER,
        }
        stream = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8"})
        await stream.prepare(request)
        if deployment == "cut-prod":
            await stream.write(sse(first) + events[0] + events[1][:12])
            return await cut_connection(request, stream)
        if deployment == "error-prod":
            error = {"error": {"message": "The server had an error.", "type": "server_error"}}
            await stream.write(sse(first) + events[0] + sse(error))
            await stream.write_eof()
            return stream
        for piece in awkward_pieces([sse(first), *events]):
            await stream.write(piece)
        await stream.write_eof()
        return stream
