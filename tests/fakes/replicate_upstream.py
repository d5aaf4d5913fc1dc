"""A fake Replicate predictions API on loopback, in the documented wire format.

    POST /v1/models/{owner}/{name}/predictions   create (honours `Prefer: wait[=n]`)
    GET  /v1/predictions/{id}                    the prediction (its `urls.get`)
    POST /v1/predictions/{id}/cancel             cancel (its `urls.cancel`)
    GET  /files/{id}/out-{i}.png                 the generated images (PNG bytes)

Predictions are JSON objects with id, model, version, input, logs, output, error, status
(starting → processing → succeeded | failed | canceled), created_at/started_at/completed_at,
metrics and urls {get, cancel, stream, web}. Errors are RFC 7807 problem details
`{"title","detail","status"}`. Without `Authorization: Bearer <token>` it answers 401.
Behaviour is chosen by the model name:

    instant     succeeded within the create call; output: a list of n URLs (`num_outputs`)
    single      succeeded at once; output: one URL string
    inline      as instant, the images inline: `data:image/png;base64,…` URIs (what the sync API
                answered files as when it came out, Replicate's changelog of 2024-10-09; the
                official SDK reads both)
    empty       succeeded at once with an empty output list
    slow        create answers `starting`; polls answer processing, processing, then succeeded
    fails       create answers starting; the poll answers failed with an error message
    canceled    create answers starting; the poll answers canceled
    never       stays processing forever (for the gateway's deadline)
    poll-fails  create answers starting; every poll answers 500 (the prediction runs on)
    poll-flaky  create answers starting; poll 1 answers 503, poll 2 429 + retry-after: 1 (what
                the official SDK retries its GETs on), poll 3 succeeded
    poll-broken create answers starting; poll 1 is reset after part of its status line, poll 2
                breaks off its body (Content-Length unmet), poll 3 succeeded
    poll-hangs  create answers starting; polls 1-2 answer processing, later ones are never
                answered (held until the client leaves, 60 s at most)
    rate-limited 429 + retry-after: 9    invalid 422    unauthorized 401 (detail holds the token)
    seedream-*  as instant, with bytedance/seedream-4.5's input schema (published on Replicate):
                unknown input fields or out-of-range values are 422; `n` images come from
                `sequential_image_generation: "auto"` + `max_images` (1-15), and, as the model
                "decides how many", a prompt holding "[one image]" gets one image however many
                were allowed
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import socket
import struct
import time
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.server import PNG_1X1, ThreadedServer, cut_connection

ERRORS: dict[str, tuple[int, str, str]] = {
    "rate-limited": (429, "Too Many Requests", "Request was throttled. Expected available in 9s."),
    "invalid": (
        422,
        "Input validation failed",
        "- input.width: Must be less than or equal to 4096",
    ),
}


SEEDREAM_INPUTS = frozenset(
    {
        "prompt",
        "image_input",
        "size",
        "aspect_ratio",
        "width",
        "height",
        "sequential_image_generation",
        "max_images",
        "disable_safety_checker",
    }
)


def seedream_input_errors(model_input: dict[str, Any]) -> list[str]:
    """Replicate's validation messages for an input that seedream-4.5's schema refuses."""
    errors = [
        f"- input: Additional property {k} is not allowed"
        for k in model_input.keys() - SEEDREAM_INPUTS
    ]
    if not isinstance(model_input.get("prompt"), str):
        errors.append("- input: prompt is required")
    if model_input.get("sequential_image_generation", "disabled") not in ("disabled", "auto"):
        errors.append("- input.sequential_image_generation: must be one of: disabled, auto")
    max_images = model_input.get("max_images", 1)
    if not isinstance(max_images, int) or not 1 <= max_images <= 15:
        errors.append("- input.max_images: Must be between 1 and 15")
    return errors


def output_count(model_input: dict[str, Any]) -> int:
    if model_input.get("sequential_image_generation") == "auto":
        if "[one image]" in str(model_input.get("prompt")):
            return 1
        return int(model_input.get("max_images", 1))
    return int(model_input.get("num_outputs", 1))


def problem(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    """An RFC 7807 problem details answer, as Replicate's API gives its errors."""
    return web.json_response(
        {"title": title, "detail": detail, "status": status},
        status=status,
        headers=headers,
        content_type="application/problem+json",
    )


def reset(request: web.Request, sent: bytes) -> web.Response:
    """`sent` (part of an answer), then the connection reset (RST: SO_LINGER 0)."""
    transport = request.transport
    assert transport is not None
    transport.write(sent)
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    return web.Response()  # (written to nobody)


class FakeReplicate(ThreadedServer):
    def __init__(self) -> None:
        super().__init__()
        self.predictions: dict[str, dict[str, Any]] = {}
        self.polls: dict[str, int] = {}
        self._ids = itertools.count(1)

    def setup(self, app: web.Application) -> None:
        app.router.add_post("/v1/models/{owner}/{name}/predictions", self._create)
        app.router.add_get("/v1/predictions/{id}", self._get)
        app.router.add_post("/v1/predictions/{id}/cancel", self._cancel)
        app.router.add_get("/files/{id}/{file}", self._file)

    @property
    def base_url(self) -> str:
        return self.origin

    def creations(self, name: str) -> list[dict[str, Any]]:
        return [
            r
            for r in self.requests
            if r["method"] == "POST" and r["path"].endswith(f"/{name}/predictions")
        ]

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if token:
            return None
        return web.json_response(
            {
                "title": "Unauthenticated",
                "detail": "You did not pass an authentication token",
                "status": 401,
            },
            status=401,
            content_type="application/problem+json",
        )

    def _prediction(self, prediction_id: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        api = f"{self.origin}/v1/predictions/{prediction_id}"
        return {
            "id": prediction_id,
            "model": f"fake-owner/{name}",
            "version": "hidden",
            "input": body.get("input", {}),
            "logs": "",
            "output": None,
            "data_removed": False,
            "error": None,
            "status": "starting",
            "created_at": "2026-11-26T01:00:00.000Z",
            "started_at": None,
            "completed_at": None,
            "metrics": {},
            "urls": {
                "cancel": f"{api}/cancel",
                "get": api,
                "stream": f"{self.origin}/stream/{prediction_id}",
                "web": f"https://replicate.com/p/{prediction_id}",
            },
        }

    def _succeed(self, prediction: dict[str, Any], single: bool = False) -> None:
        count = output_count(prediction["input"])
        name = prediction["model"].split("/", 1)[1]
        urls = [f"{self.origin}/files/{prediction['id']}/out-{i}.png" for i in range(count)]
        if name == "inline":
            urls = [f"data:image/png;base64,{base64.b64encode(PNG_1X1).decode()}"] * count
        elif name == "empty":
            urls = []
        prediction |= {
            "status": "succeeded",
            "output": urls[0] if single else urls,
            "logs": "Generating...\n100%|██████████| 4/4",
            "started_at": "2026-11-26T01:00:00.100Z",
            "completed_at": "2026-11-26T01:00:02.000Z",
            "metrics": {"predict_time": 1.9, "image_count": count},
        }

    async def _create(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = orjson.loads(raw) if raw else {}
        self.record(request, body)
        if (refused := self._unauthorized(request)) is not None:
            return refused
        name = request.match_info["name"]
        if name == "unauthorized":
            token = request.headers["authorization"].removeprefix("Bearer ")
            return web.json_response(
                {"title": "Unauthenticated", "detail": f"Invalid token {token}", "status": 401},
                status=401,
                content_type="application/problem+json",
            )
        if name in ERRORS:
            status, title, detail = ERRORS[name]
            return web.json_response(
                {"title": title, "detail": detail, "status": status},
                status=status,
                headers={"retry-after": "9"} if status == 429 else {},
                content_type="application/problem+json",
            )
        if not isinstance(body.get("input"), dict):
            return web.json_response(
                {"title": "Invalid input", "detail": "input is required", "status": 422},
                status=422,
                content_type="application/problem+json",
            )
        if name.startswith("seedream") and (errors := seedream_input_errors(body["input"])):
            return web.json_response(
                {"title": "Input validation failed", "detail": "\n".join(errors), "status": 422},
                status=422,
                content_type="application/problem+json",
            )
        prediction_id = f"fake{next(self._ids):04d}qw9rtx0cm8z2v"
        prediction = self._prediction(prediction_id, name, body)
        self.predictions[prediction_id] = prediction
        self.polls[prediction_id] = 0
        waits = request.headers.get("prefer", "").startswith("wait")
        at_once = name in ("instant", "single", "inline", "empty") or name.startswith("seedream")
        if at_once and waits:
            self._succeed(prediction, single=name == "single")
        # Otherwise the Prefer-wait window passed: the API answers `starting` even while the
        # prediction is processing (so the SDKs poll).
        return web.json_response(prediction, status=201)

    async def _get(self, request: web.Request) -> web.StreamResponse:
        self.record(request, None, at=time.monotonic())  # (when: a Retry-After's wait)
        if (refused := self._unauthorized(request)) is not None:
            return refused
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None:
            return web.json_response(
                {"title": "Not found", "detail": "Prediction not found", "status": 404},
                status=404,
                content_type="application/problem+json",
            )
        self.polls[prediction["id"]] += 1
        name = prediction["model"].split("/", 1)[1]
        polls = self.polls[prediction["id"]]
        if name == "poll-fails" and prediction["status"] != "canceled":
            return problem(500, "Internal Server Error", "try again")
        if name == "poll-flaky" and polls == 1:
            return problem(503, "Service Unavailable", "The service is temporarily unavailable.")
        if name == "poll-flaky" and polls == 2:
            return problem(429, "Too Many Requests", "Request was throttled.", {"retry-after": "1"})
        if name == "poll-broken" and polls == 1:
            return reset(request, b"HTTP/1.1 200")
        if name == "poll-broken" and polls == 2:
            body = orjson.dumps(prediction)
            response = web.StreamResponse(headers={"content-type": "application/json"})
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
            return await cut_connection(request, response)
        if name == "poll-hangs" and polls > 2 and prediction["status"] != "canceled":
            for _ in range(600):  # until the client leaves (60 s at most)
                if request.transport is None or request.transport.is_closing():
                    break
                await asyncio.sleep(0.1)
            return problem(504, "Gateway Timeout", "held")
        if prediction["status"] in ("succeeded", "failed", "canceled"):
            pass
        elif name == "fails":
            prediction |= {"status": "failed", "error": "CUDA out of memory (fake)"}
        elif name == "canceled":
            prediction["status"] = "canceled"
        elif name == "never":
            prediction["status"] = "processing"
        elif polls < 3:
            prediction["status"] = "processing"
        else:
            self._succeed(prediction, single=name == "single")
        return web.json_response(prediction)

    async def _cancel(self, request: web.Request) -> web.Response:
        self.record(request, None)
        if (refused := self._unauthorized(request)) is not None:
            return refused
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None:
            return web.json_response({"title": "Not found", "status": 404}, status=404)
        if prediction["status"] not in ("succeeded", "failed"):
            prediction["status"] = "canceled"
        return web.json_response(prediction)

    async def _file(self, request: web.Request) -> web.Response:
        self.record(request, None)
        return web.Response(body=PNG_1X1, content_type="image/png")
