"""A straightforward pure-Python Bedrock ConverseStream reframer: AWS event stream decoding
(prelude, headers, payload, both CRC-32s checked with zlib) and the same OpenAI chunks as the
Rust reframer "bedrock" (rust_core/src/reframe/bedrock.rs). It is the baseline of
`eventstream_bench.py` and the differential oracle of tests/core/test_bedrock_eventstream.py.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import orjson

STOP_REASONS = {
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
_FIXED = {2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}


class EventStreamError(ValueError):
    """A CRC mismatch or malformed message."""


class CutOff(Exception):
    """The stream ended inside a message or before messageStop."""


def decode_headers(raw: bytes) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    at = 0
    while at < len(raw):
        name_len = raw[at]
        name = raw[at + 1 : at + 1 + name_len].decode()
        at += 1 + name_len
        kind = raw[at]
        at += 1
        if kind in (0, 1):
            headers[name] = kind == 0
        elif kind in (6, 7):
            (length,) = struct.unpack_from(">H", raw, at)
            value = raw[at + 2 : at + 2 + length]
            headers[name] = value.decode() if kind == 7 else value
            at += 2 + length
        elif kind in _FIXED:
            headers[name] = raw[at : at + _FIXED[kind]]
            at += _FIXED[kind]
        else:
            raise EventStreamError(f"unknown header type {kind}")
        if at > len(raw):
            raise EventStreamError("truncated header")
    return headers


class EventStreamDecoder:
    def __init__(self, max_message_bytes: int = 1 << 20) -> None:
        self.buf = bytearray()
        self.max = max_message_bytes

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], bytes]]:
        self.buf += data
        out = []
        while len(self.buf) >= 12:
            total, headers_len, prelude_crc = struct.unpack_from(">III", self.buf, 0)
            if zlib.crc32(self.buf[:8]) != prelude_crc:
                raise EventStreamError("prelude CRC mismatch")
            if total < 16 or headers_len > total - 16 or total > self.max:
                raise EventStreamError("bad lengths")
            if len(self.buf) < total:
                break
            message = bytes(self.buf[:total])
            del self.buf[:total]
            (message_crc,) = struct.unpack_from(">I", message, total - 4)
            if zlib.crc32(message[: total - 4]) != message_crc:
                raise EventStreamError("message CRC mismatch")
            headers = decode_headers(message[12 : 12 + headers_len])
            out.append((headers, message[12 + headers_len : total - 4]))
        return out


class BedrockRef:
    """Same constructor as `_core.Reframer` minus the kind."""

    def __init__(self, model: str, response_id: str, created: int, include_usage: bool) -> None:
        self.head = {
            "id": response_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        self.include_usage = include_usage
        self.decoder = EventStreamDecoder()
        self.role_sent = False
        self.tools: dict[int, int] = {}
        self.stopped = False
        self.done = False
        self.usage: dict[str, int] | None = None
        self.upstream_error: tuple[str, str] | None = None

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return b"data: " + orjson.dumps({**self.head, "choices": [choice]}) + b"\n\n"

    def _role(self, out: list[bytes]) -> None:
        if not self.role_sent:
            out.append(self._chunk({"role": "assistant", "content": ""}))
            self.role_sent = True

    def _end(self, out: list[bytes]) -> None:
        if self.include_usage:
            usage = self.usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            body = {**self.head, "choices": [], "usage": usage}
            out.append(b"data: " + orjson.dumps(body) + b"\n\n")
        out.append(b"data: [DONE]\n\n")
        self.done = True

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        if self.done or self.upstream_error:
            return b""
        for headers, payload in self.decoder.feed(data):
            self._event(headers, orjson.loads(payload), out)
            if self.done or self.upstream_error:
                break
        return b"".join(out)

    def _event(self, headers: dict[str, Any], body: Any, out: list[bytes]) -> None:
        if headers.get(":message-type", "event") != "event":
            self.upstream_error = (headers.get(":exception-type", ""), body.get("message", ""))
            return
        name = headers.get(":event-type")
        if name == "messageStart":
            self._role(out)
        elif name == "contentBlockStart":
            tool = (body.get("start") or {}).get("toolUse")
            if tool:
                self._role(out)
                index = len(self.tools)
                self.tools[body.get("contentBlockIndex", 0)] = index
                call = {
                    "index": index,
                    "id": tool.get("toolUseId", ""),
                    "type": "function",
                    "function": {"name": tool.get("name", ""), "arguments": ""},
                }
                out.append(self._chunk({"tool_calls": [call]}))
        elif name == "contentBlockDelta":
            delta = body.get("delta") or {}
            self._role(out)
            if delta.get("text"):
                out.append(self._chunk({"content": delta["text"]}))
            fragment = (delta.get("toolUse") or {}).get("input")
            if fragment:
                index = self.tools[body.get("contentBlockIndex", 0)]
                call = {"index": index, "function": {"arguments": fragment}}
                out.append(self._chunk({"tool_calls": [call]}))
        elif name == "messageStop":
            self._role(out)
            reason = STOP_REASONS.get(body.get("stopReason") or "end_turn", "stop")
            out.append(self._chunk({}, reason))
            self.stopped = True
        elif name == "metadata":
            usage = body.get("usage")
            if usage:
                prompt = (
                    usage.get("inputTokens", 0)
                    + usage.get("cacheReadInputTokens", 0)
                    + usage.get("cacheWriteInputTokens", 0)
                )
                completion = usage.get("outputTokens", 0)
                self.usage = {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                }
            if self.stopped:
                self._end(out)

    def finish(self) -> bytes:
        if self.done or self.upstream_error:
            return b""
        if self.decoder.buf or not self.stopped:
            raise CutOff("bedrock stream ended early")
        out: list[bytes] = []
        self._end(out)
        return b"".join(out)
