"""A fake Bedrock Runtime on loopback: `POST /model/{modelId}/converse` (a ConverseResponse) and
`/converse-stream` (`application/vnd.amazon.eventstream`: binary messages with a CRC-checked
prelude, string headers `:event-type`/`:content-type`/`:message-type`, a JSON payload carrying
Bedrock's `p` padding field, and a message CRC), errors with `x-amzn-ErrorType` and
`{"message": …}` as Bedrock sends them.

Like Bedrock it checks SigV4: the signature is recomputed with botocore's own signer from the
request as received (the signed headers, body and X-Amz-Date) and the fake's secret; a missing
or wrong one is 403 (`InvalidSignatureException` / `UnrecognizedClientException`), as is a
missing session token when the fake expects one. Behaviour by model id:

    anthropic.claude-fake-v1:0   text; streamed over several messages written in awkward pieces
    anthropic.claude-tools-v1:0  text then a toolUse whose input streams as JSON fragments
    fake.throttled               429 ThrottlingException
    fake.invalid                 400 ValidationException
    fake.stream-throttled        streamed: messageStart, then a throttlingException message
    fake.stream-error            streamed: messageStart, then a modelStreamErrorException
    fake.corrupt                 streamed: a message whose CRC is wrong
    fake.cut                     streamed: the connection is cut mid-message
"""

from __future__ import annotations

import struct
import zlib
from datetime import datetime
from typing import Any
from unittest import mock

import orjson
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.fakes.openai_upstream import awkward_pieces
from tests.fakes.server import ThreadedServer, cut_connection

ACCESS_KEY_ID = "AKIAFAKEBEDROCK7"
SECRET_ACCESS_KEY = "bedrock/SECRET+never-leak-wJalrXUtnFEMI"
SESSION_TOKEN = "FwoGZXIvYXdzSESSION-never-leak-token"
REGION = "us-east-1"
ANSWER = ["Hello", " from", " fake bedrock"]
TOOL_FRAGMENTS = ['{"ci', 'ty": "Par', 'is", "unit": "c"}']
TOOL_INPUT = {"city": "Paris", "unit": "c"}
USAGE = {"inputTokens": 12, "outputTokens": 9, "totalTokens": 21}
ERRORS = {
    "fake.throttled": (429, "ThrottlingException", "Too many requests, please wait."),
    "fake.invalid": (400, "ValidationException", "The provided model identifier is invalid."),
}


def encode(headers: dict[str, str], payload: bytes) -> bytes:
    """One event stream message (string headers only), as the AWS spec lays it out."""
    head = b"".join(
        bytes([len(n)]) + n.encode() + b"\x07" + struct.pack(">H", len(v)) + v.encode()
        for n, v in headers.items()
    )
    total = 16 + len(head) + len(payload)
    prelude = struct.pack(">II", total, len(head))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + head + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(name: str, data: dict[str, Any]) -> bytes:
    headers = {":event-type": name, ":content-type": "application/json", ":message-type": "event"}
    return encode(headers, orjson.dumps(data | {"p": "abcdefghijklmnopqrstu"}))


def exception(name: str, message: str) -> bytes:
    headers = {
        ":exception-type": name,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode(headers, orjson.dumps({"message": message}))


def converse(model: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"text": "".join(ANSWER)}]
    stop = "end_turn"
    if "tools" in model:
        content = [
            {"text": "Let me check."},
            {
                "toolUse": {
                    "toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q",
                    "name": "get_weather",
                    "input": TOOL_INPUT,
                }
            },
        ]
        stop = "tool_use"
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop,
        "usage": USAGE,
        "metrics": {"latencyMs": 321},
    }


def stream_messages(model: str) -> list[bytes]:
    out = [event("messageStart", {"role": "assistant"})]
    words = ["Let me check."] if "tools" in model else ANSWER
    for word in words:
        out.append(event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": word}}))
    out.append(event("contentBlockStop", {"contentBlockIndex": 0}))
    stop = "end_turn"
    if "tools" in model:
        stop = "tool_use"
        start = {"toolUse": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "get_weather"}}
        out.append(event("contentBlockStart", {"contentBlockIndex": 1, "start": start}))
        for fragment in TOOL_FRAGMENTS:
            delta = {"toolUse": {"input": fragment}}
            out.append(event("contentBlockDelta", {"contentBlockIndex": 1, "delta": delta}))
        out.append(event("contentBlockStop", {"contentBlockIndex": 1}))
    out.append(event("messageStop", {"stopReason": stop}))
    out.append(event("metadata", {"usage": USAGE, "metrics": {"latencyMs": 321}}))
    return out


def error(status: int, name: str, message: str) -> web.Response:
    return web.json_response(
        {"message": message},
        status=status,
        headers={
            "x-amzn-ErrorType": f"{name}:http://internal.amazon.com/coral/com.amazon.bedrock/"
        },
    )


class FakeBedrock(ThreadedServer):
    def __init__(self, *, session_token: str | None = SESSION_TOKEN) -> None:
        super().__init__()
        self.session_token = session_token

    def setup(self, app: web.Application) -> None:
        app.router.add_post("/model/{model}/{operation}", self._handle)

    def _signature_error(self, request: web.Request, body: bytes) -> web.Response | None:
        """Recomputes the SigV4 signature as Bedrock does; None when it matches."""
        given = request.headers.get("authorization", "")
        amz_date = request.headers.get("x-amz-date", "")
        if not given.startswith("AWS4-HMAC-SHA256 ") or not amz_date:
            return error(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
        fields = dict(p.strip().split("=", 1) for p in given[len("AWS4-HMAC-SHA256 ") :].split(","))
        if fields.get("Credential", "").split("/")[0] != ACCESS_KEY_ID:
            return error(403, "UnrecognizedClientException", "The security token is invalid.")
        token = request.headers.get("x-amz-security-token")
        if self.session_token is not None and token != self.session_token:
            return error(403, "UnrecognizedClientException", "The security token is invalid.")
        signed = fields.get("SignedHeaders", "").split(";")
        if "host" not in signed or "x-amz-date" not in signed:
            return error(403, "InvalidSignatureException", "host and x-amz-date must be signed")
        headers = {name: request.headers[name] for name in signed if name in request.headers}
        url = f"http://{request.headers['host']}{request.raw_path}"
        expected = AWSRequest(method=request.method, url=url, headers=headers, data=body)
        when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ")
        credentials = Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY, token)
        with mock.patch("botocore.auth.get_current_datetime", return_value=when):
            SigV4Auth(credentials, "bedrock", REGION).add_auth(expected)
        if expected.headers["Authorization"] != given:
            return error(
                403,
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided.",
            )
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        model = request.match_info["model"]
        operation = request.match_info["operation"]
        raw = await request.read()
        body = orjson.loads(raw) if raw else {}
        self.record(request, body, model=model, operation=operation)
        refused = self._signature_error(request, raw)
        if refused is not None:
            return refused
        if operation not in ("converse", "converse-stream"):
            return error(404, "UnknownOperationException", "unknown operation")
        if not body.get("messages"):
            return error(400, "ValidationException", "messages: must not be empty")
        if model in ERRORS:
            return error(*ERRORS[model])
        if operation == "converse":
            return web.json_response(converse(model))
        stream = web.StreamResponse(
            headers={
                "content-type": "application/vnd.amazon.eventstream",
                "x-amzn-requestid": "fake-request-id",
            }
        )
        await stream.prepare(request)
        messages = stream_messages(model)
        if model == "fake.stream-throttled":
            await stream.write(messages[0] + messages[1])
            await stream.write(exception("throttlingException", "Too many tokens, please wait."))
        elif model == "fake.stream-error":
            await stream.write(messages[0] + messages[1])
            await stream.write(exception("modelStreamErrorException", "The model failed."))
        elif model == "fake.corrupt":
            broken = bytearray(messages[1])
            broken[-1] ^= 0xFF
            await stream.write(messages[0] + bytes(broken))
        elif model == "fake.cut":
            await stream.write(messages[0] + messages[1][:20])
            return await cut_connection(request, stream)
        else:
            for piece in awkward_pieces(messages):
                await stream.write(piece)
        await stream.write_eof()
        return stream
