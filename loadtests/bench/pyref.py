"""Pure-Python reference of gateway._core: the same transforms, written plainly.

Used two ways: as the baseline of `core_bench.py` (incremental SSE parsing in Python + orjson
loads/dumps, the straightforward implementation the Rust core replaces) and as a differential
oracle in `tests/core/` (outputs compared event by event, as parsed JSON).
"""

from __future__ import annotations

import math
import re
from array import array
from collections.abc import Callable
from itertools import accumulate
from typing import Any

import orjson

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"
DONE = b"data: [DONE]\n\n"


class SseError(ValueError):
    pass


class UpstreamStreamError(Exception):
    pass


class SseParser:
    """Incremental WHATWG event-stream parser (same EOF rule as the Rust core)."""

    def __init__(self, max_event_bytes: int = 1 << 20) -> None:
        self.max = max_event_bytes
        self.buf = b""
        self.started = False
        self.event = ""
        self.data: list[str] = []
        self.data_len = 0

    def push(self, chunk: bytes) -> list[tuple[str, str]]:
        buf = self.buf + chunk
        if not self.started:
            if len(buf) < 3 and _BOM.startswith(buf):
                self.buf = buf
                return []
            self.started = True
            if buf.startswith(_BOM):
                buf = buf[3:]
        # A trailing CR may be the first half of a CRLF: hold it until the next chunk.
        scan = buf[:-1] if buf.endswith(b"\r") else buf
        cut = max(scan.rfind(b"\n"), scan.rfind(b"\r"))
        if cut < 0:
            self.buf = buf
            self._check(len(buf))
            return []
        end = cut + 1
        complete, self.buf = buf[:end], buf[end:]
        self._check(len(self.buf))
        events: list[tuple[str, str]] = []
        lines = _LINE_END.split(complete)
        lines.pop()  # the empty string after the last line end
        for line in lines:
            self._line(line, events)
        return events

    def finish(self) -> list[tuple[str, str]]:
        buf = self.buf
        self.buf = b""
        events: list[tuple[str, str]] = []
        if buf.endswith(b"\r"):
            self._line(buf[:-1], events)
        self._line(b"", events)
        return events

    def _check(self, extra: int) -> None:
        if self.data_len + len(self.event) + extra > self.max:
            raise SseError(f"upstream SSE event larger than max_event_bytes ({self.max})")

    def _line(self, line: bytes, events: list[tuple[str, str]]) -> None:
        if not line:
            if self.data:
                events.append((self.event or "message", "\n".join(self.data)))
            self.event, self.data, self.data_len = "", [], 0
            return
        if line[:1] == b":":
            return
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._check(len(value) + 1)
            self.data.append(value.decode("utf-8", "replace"))
            self.data_len += len(value) + 1
        elif name == b"event":
            self.event = value.decode("utf-8", "replace")


def _event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class _Base:
    def __init__(
        self, model: str, response_id: str, created: int, include_usage: bool, max_event_bytes: int
    ) -> None:
        self.parser = SseParser(max_event_bytes)
        self.model = model
        self.id = response_id
        self.created = created
        self.include_usage = include_usage
        self.usage: dict[str, int] | None = None
        self.finish_reason: str | None = None
        self.upstream_error: tuple[str, str] | None = None
        self.content_chars = 0
        self.done = False
        self.role_sent = False

    @property
    def closed(self) -> bool:
        return self.done or self.upstream_error is not None

    def feed(self, data: bytes) -> bytes:
        if self.closed:
            return b""
        out: list[bytes] = []
        for name, payload in self.parser.push(data):
            self.on_event(name, payload, out)
            if self.closed:
                break
        return b"".join(out)

    def finish(self) -> bytes:
        if self.closed:
            return b""
        out: list[bytes] = []
        for name, payload in self.parser.finish():
            self.on_event(name, payload, out)
            if self.closed:
                break
        if not self.closed:
            self.on_eof(out)
        return b"".join(out)

    def on_event(self, name: str, data: str, out: list[bytes]) -> None:
        raise NotImplementedError

    def on_eof(self, out: list[bytes]) -> None:
        raise UpstreamStreamError("stream ended without its terminator")

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _event(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    def role(self, out: list[bytes]) -> None:
        if not self.role_sent:
            self.role_sent = True
            out.append(self.chunk({"role": "assistant", "content": ""}))

    def end(self, out: list[bytes]) -> None:
        if self.include_usage:
            u = self.usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            usage = {k: u[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
            if u.get("cached_tokens"):
                usage["prompt_tokens_details"] = {"cached_tokens": u["cached_tokens"]}
            if u.get("cache_write_tokens"):
                usage["cache_creation_input_tokens"] = u["cache_write_tokens"]
            out.append(
                _event(
                    {
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": usage,
                    }
                )
            )
        out.append(DONE)
        self.done = True


def _loads(data: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SseError(f"malformed stream event: {exc}") from exc


class OpenAIRef(_Base):
    def on_event(self, name: str, data: str, out: list[bytes]) -> None:
        if data.strip() == "[DONE]":
            out.append(DONE)
            self.done = True
            return
        obj = _loads(data)
        if not isinstance(obj, dict):
            raise SseError("malformed openai stream event")
        err = obj.get("error")
        if err is None and obj.get("object") == "error":
            err = obj  # vLLM's older top-level error object
        if err is not None:
            kind = err.get("type") or err.get("code") or "error"
            self.upstream_error = (str(kind), str(err.get("message") or ""))
            return
        choices = obj.get("choices") or []
        usage = obj.get("usage")
        for choice in choices:
            if choice.get("finish_reason") is not None:
                self.finish_reason = choice["finish_reason"]
            delta = choice.get("delta") or {}
            if delta.get("content"):
                self.content_chars += len(delta["content"])
            for call in delta.get("tool_calls") or []:
                args = (call.get("function") or {}).get("arguments")
                if args:
                    self.content_chars += len(args)
        if usage is not None:
            details = usage.get("prompt_tokens_details") or {}
            p, c = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
            total = usage.get("total_tokens")
            self.usage = {
                "prompt_tokens": p,
                "completion_tokens": c,
                "total_tokens": p + c if total is None else total,
                "cached_tokens": details.get("cached_tokens") or 0,
            }
            if not choices and not self.include_usage:
                return
        obj["model"] = self.model
        out.append(_event(obj))


_ANTHROPIC_STOP = {"max_tokens": "length", "tool_use": "tool_calls", "refusal": "content_filter"}
_ANTHROPIC_STOP["model_context_window_exceeded"] = "length"


class AnthropicRef(_Base):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.tools: dict[int, int] = {}
        self.raw_usage: dict[str, int] = {}

    def _usage(self, u: dict[str, Any]) -> None:
        self.raw_usage.update({k: v for k, v in u.items() if isinstance(v, int)})
        r = self.raw_usage
        cached = r.get("cache_read_input_tokens", 0)
        prompt = r.get("input_tokens", 0) + r.get("cache_creation_input_tokens", 0) + cached
        completion = r.get("output_tokens", 0)
        self.usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "cached_tokens": cached,
            "cache_write_tokens": r.get("cache_creation_input_tokens", 0),
        }

    def on_event(self, name: str, data: str, out: list[bytes]) -> None:
        ev = _loads(data)
        kind = ev.get("type", name)
        if kind == "message_start":
            usage = (ev.get("message") or {}).get("usage")
            if usage:
                self._usage(usage)
            self.role(out)
        elif kind == "content_block_start":
            block = ev.get("content_block") or {}
            if block.get("type") == "text" and block.get("text"):
                self.role(out)
                self.content_chars += len(block["text"])
                out.append(self.chunk({"content": block["text"]}))
            elif block.get("type") == "tool_use":
                index = len(self.tools)
                self.tools[ev.get("index", 0)] = index
                self.role(out)
                call = {
                    "index": index,
                    "id": block.get("id", ""),
                    "type": "function",
                    "function": {"name": block.get("name", ""), "arguments": ""},
                }
                out.append(self.chunk({"tool_calls": [call]}))
        elif kind == "content_block_delta":
            delta = ev.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                self.role(out)
                self.content_chars += len(delta["text"])
                out.append(self.chunk({"content": delta["text"]}))
            elif delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                tool = self.tools.get(ev.get("index", 0))
                if tool is not None:
                    self.role(out)
                    self.content_chars += len(delta["partial_json"])
                    fn = {"arguments": delta["partial_json"]}
                    out.append(self.chunk({"tool_calls": [{"index": tool, "function": fn}]}))
        elif kind == "message_delta":
            if ev.get("usage"):
                self._usage(ev["usage"])
            reason = (ev.get("delta") or {}).get("stop_reason")
            matched = (ev.get("delta") or {}).get("stop_sequence")
            if reason is not None:
                self.finish_reason = _ANTHROPIC_STOP.get(reason, "stop")
                self.role(out)
                if reason == "stop_sequence" and isinstance(matched, str):
                    chunk = orjson.loads(self.chunk({}, "stop")[len(b"data: ") :])
                    chunk["choices"][0]["stop_reason"] = matched
                    out.append(_event(chunk))
                else:
                    out.append(self.chunk({}, self.finish_reason))
        elif kind == "message_stop":
            self.role(out)
            self.end(out)
        elif kind == "error":
            err = ev.get("error") or {}
            self.upstream_error = (err.get("type") or "error", err.get("message") or "")


_GEMINI_FILTER = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}


class GeminiRef(_Base):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.tool_calls = 0
        self.finished = False

    def _finish(self, reason: str, out: list[bytes]) -> None:
        if not self.finished:
            self.finished = True
            self.finish_reason = reason
            self.role(out)
            out.append(self.chunk({}, reason))

    def on_event(self, name: str, data: str, out: list[bytes]) -> None:
        r = _loads(data)
        err = r.get("error")
        if err is not None:
            kind = err.get("status") or (str(err["code"]) if "code" in err else "error")
            self.upstream_error = (kind, err.get("message") or "")
            return
        um = r.get("usageMetadata")
        if um is not None:
            prompt = um.get("promptTokenCount", 0) + um.get("toolUsePromptTokenCount", 0)
            completion = um.get("candidatesTokenCount", 0) + um.get("thoughtsTokenCount", 0)
            self.usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": um.get("totalTokenCount", prompt + completion),
                "cached_tokens": um.get("cachedContentTokenCount", 0),
            }
        candidates = r.get("candidates") or []
        if not candidates:
            if (r.get("promptFeedback") or {}).get("blockReason"):
                self._finish("content_filter", out)
            return
        cand = candidates[0]
        parts = (cand.get("content") or {}).get("parts") or []
        text = "".join(p["text"] for p in parts if "text" in p and not p.get("thought"))
        if text:
            self.role(out)
            self.content_chars += len(text)
            out.append(self.chunk({"content": text}))
        for p in parts:
            fc = p.get("functionCall")
            if fc is None:
                continue
            args = orjson.dumps(fc.get("args", {})).decode()
            index = self.tool_calls
            self.tool_calls += 1
            self.role(out)
            self.content_chars += len(args)
            call = {
                "index": index,
                "id": f"call_{self.id}_{index}",
                "type": "function",
                "function": {"name": fc.get("name", ""), "arguments": args},
            }
            out.append(self.chunk({"tool_calls": [call]}))
        reason = cand.get("finishReason")
        if reason is not None:
            mapped = "content_filter" if reason in _GEMINI_FILTER else "stop"
            if reason == "MAX_TOKENS":
                mapped = "length"
            if mapped == "stop" and self.tool_calls:
                mapped = "tool_calls"
            self._finish(mapped, out)

    def on_eof(self, out: list[bytes]) -> None:
        if not self.finished:
            raise UpstreamStreamError("gemini stream ended before a finishReason")
        self.end(out)


def _anthropic_event(name: str, obj: Any) -> bytes:
    return f"event: {name}\ndata: ".encode() + orjson.dumps(obj) + b"\n\n"


STOP_REASONS = {
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


class _FromOpenAI(_Base):
    """The reading of an OpenAI chunk shared by the references that translate them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cached = 0
        self.written = 0

    def _choices(self, data: str) -> list[dict[str, Any]]:
        """The chunk's choices of index 0 (the one translated), its usage taken; none for an
        upstream's error (taken)."""
        obj = _loads(data)
        if obj.get("error") is not None:
            err = obj["error"] if isinstance(obj["error"], dict) else {}
            kind = err.get("type") or err.get("code") or "error"
            self.upstream_error = (kind, err.get("message") or "")
            return []
        if obj.get("usage"):
            u = obj["usage"]
            p, c = u.get("prompt_tokens") or 0, u.get("completion_tokens") or 0
            self.usage = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
            self.cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            self.written = u.get("cache_creation_input_tokens") or 0
        return [c for c in obj.get("choices") or [] if (c.get("index") or 0) == 0]


class ToAnthropicRef(_FromOpenAI):
    """OpenAI chunks → Anthropic Messages events (Rust kind `openai_to_anthropic`)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.started = False
        self.open: str | int | None = None  # "text", a tool-call index, or nothing
        self.blocks = 0
        self.tools: list[int] = []
        # blocks held back while a tool_use block is open: [kind, id, name, fragments]
        self.pending: list[list[Any]] = []
        self.stop: str | None = None
        self.stop_sequence: str | None = None

    def _start(self, out: list[bytes]) -> None:
        if not self.started:
            self.started = True
            message = {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }
            out.append(
                _anthropic_event("message_start", {"type": "message_start", "message": message})
            )

    def _close(self, out: list[bytes]) -> None:
        if self.open is not None:
            stop = {"type": "content_block_stop", "index": self.blocks - 1}
            out.append(_anthropic_event("content_block_stop", stop))
            self.open = None

    def _open(self, out: list[bytes], kind: str | int, block: dict[str, Any]) -> None:
        self._close(out)
        start = {"type": "content_block_start", "index": self.blocks, "content_block": block}
        out.append(_anthropic_event("content_block_start", start))
        self.blocks += 1
        self.open = kind

    def _delta(self, out: list[bytes], delta: dict[str, Any]) -> None:
        event = {"type": "content_block_delta", "index": self.blocks - 1, "delta": delta}
        out.append(_anthropic_event("content_block_delta", event))

    def _text(self, out: list[bytes], text: str) -> None:
        if self.open != "text":
            self._open(out, "text", {"type": "text", "text": ""})
        self._delta(out, {"type": "text_delta", "text": text})

    def _tool(self, out: list[bytes], index: int, call_id: str, name: str) -> None:
        block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
        self._open(out, index, block)

    def _args(self, out: list[bytes], args: str) -> None:
        if args:
            self._delta(out, {"type": "input_json_delta", "partial_json": args})

    def _flush(self, out: list[bytes]) -> None:
        if not self.pending:
            return
        self._close(out)
        pending, self.pending = self.pending, []
        for kind, call_id, name, fragments in pending:
            if kind == "text":
                for fragment in fragments:
                    self._text(out, fragment)
            else:
                self._tool(out, kind, call_id, name)
                for fragment in fragments:
                    self._args(out, fragment)
                self._close(out)

    def on_event(self, name: str, data: str, out: list[bytes]) -> None:
        if data.strip() == "[DONE]":
            self._start(out)
            self._flush(out)
            self._close(out)
            u = self.usage or {"prompt_tokens": 0, "completion_tokens": 0}
            usage = {"input_tokens": u["prompt_tokens"] - self.cached - self.written}
            if self.written:
                usage["cache_creation_input_tokens"] = self.written
            if self.cached:
                usage["cache_read_input_tokens"] = self.cached
            usage["output_tokens"] = u["completion_tokens"]
            delta = {"stop_reason": self.stop or "end_turn", "stop_sequence": self.stop_sequence}
            md = {"type": "message_delta", "delta": delta, "usage": usage}
            out.append(_anthropic_event("message_delta", md))
            out.append(_anthropic_event("message_stop", {"type": "message_stop"}))
            self.done = True
            return
        for choice in self._choices(data):
            self._start(out)
            delta = choice.get("delta") or {}
            text = delta.get("content")
            tool_open = isinstance(self.open, int)
            if text:
                self.content_chars += len(text)
                if not tool_open:
                    self._text(out, text)
                elif self.pending and self.pending[-1][0] == "text":
                    self.pending[-1][3].append(text)
                else:
                    self.pending.append(["text", "", "", [text]])
            for call in delta.get("tool_calls") or []:
                index = call.get("index") or 0
                function = call.get("function") or {}
                args = function.get("arguments") or ""
                self.content_chars += len(args)
                held = next((p for p in self.pending if p[0] == index), None)
                if self.open == index:
                    self._args(out, args)
                elif held is not None:
                    held[1] = held[1] or call.get("id") or ""
                    held[2] = held[2] or function.get("name") or ""
                    if args:
                        held[3].append(args)
                elif index in self.tools:
                    raise SseError("tool call continued after the stream finished it")
                else:
                    self.tools.append(index)
                    call_id, fn = call.get("id") or "", function.get("name") or ""
                    if isinstance(self.open, int):
                        self.pending.append([index, call_id, fn, [args] if args else []])
                    else:
                        self._tool(out, index, call_id, fn)
                        self._args(out, args)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
                self.stop = STOP_REASONS.get(choice["finish_reason"], "end_turn")
                matched = choice.get("stop_reason")
                if choice["finish_reason"] == "stop" and isinstance(matched, str):
                    self.stop, self.stop_sequence = "stop_sequence", matched
                self._flush(out)


class AnthropicPassthroughRef(_Base):
    """Anthropic events relayed (Rust kind `anthropic_passthrough`): message.model rewritten."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.anthropic_usage: dict[str, int] = {}

    def on_event(self, name: str, data: str, out: list[bytes]) -> None:
        obj = _loads(data)
        kind = obj.get("type") or name
        if kind == "error":
            err = obj.get("error") or {}
            self.upstream_error = (err.get("type") or "error", err.get("message") or "")
            return
        usage = None
        if kind == "message_start":
            obj["message"]["model"] = self.model
            usage = obj["message"].get("usage")
        elif kind == "message_delta":
            usage = obj.get("usage")
            reason = (obj.get("delta") or {}).get("stop_reason")
            if reason:
                self.finish_reason = _ANTHROPIC_STOP.get(reason, "stop")
        elif kind == "content_block_delta":
            delta = obj.get("delta") or {}
            self.content_chars += len(delta.get("text") or "") + len(
                delta.get("partial_json") or ""
            )
        if usage:
            self.anthropic_usage |= {k: v for k, v in usage.items() if isinstance(v, int)}
            u = self.anthropic_usage
            p = sum(
                u.get(k, 0)
                for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
            )
            c = u.get("output_tokens", 0)
            self.usage = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
        out.append(_anthropic_event(kind, obj))
        if kind == "message_stop":
            self.done = True


KINDS: dict[str, Callable[..., _Base]] = {
    "openai": OpenAIRef,
    "anthropic": AnthropicRef,
    "gemini": GeminiRef,
    "openai_to_anthropic": ToAnthropicRef,
    "anthropic_passthrough": AnthropicPassthroughRef,
}


def reframer(
    kind: str,
    model: str,
    response_id: str,
    created: int,
    include_usage: bool,
    max_event_bytes: int = 1 << 20,
) -> _Base:
    return KINDS[kind](model, response_id, created, include_usage, max_event_bytes)


class PyLimiter:
    """A plain token bucket + daily quota limiter (dict + float math), same semantics."""

    def __init__(self) -> None:
        self.buckets: dict[str, list[float]] = {}
        self.quotas: dict[str, list[int]] = {}

    def acquire(
        self,
        buckets: list[tuple[str, float, float, float]],
        quotas: list[tuple[str, int, int]],
        now: float,
    ) -> tuple[bool, float]:
        levels = []
        allowed, wait = True, 0.0
        for key, cap, rate, cost in buckets:
            st = self.buckets.get(key)
            level = cap if st is None else min(cap, st[0] + rate * max(0.0, now - st[1]))
            levels.append(level)
            if level < cost:
                allowed = False
                wait = max(wait, (cost - level) / rate if rate > 0 and cost <= cap else math.inf)
        day = int(now // 86400)
        used = []
        for key, limit, cost in quotas:
            q = self.quotas.get(key)
            u = q[1] if q is not None and q[0] == day else 0
            used.append(u)
            if u + cost > limit:
                allowed = False
                wait = max(wait, (day + 1) * 86400 - now)
        if not allowed:
            return False, wait
        for (key, _cap, _rate, cost), level in zip(buckets, levels, strict=True):
            self.buckets[key] = [level - cost, now]
        for (key, _limit, cost), u in zip(quotas, used, strict=True):
            self.quotas[key] = [day, u + cost]
        return True, 0.0


_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 and -1 as signed bytes


def nesting_depth(body: bytes) -> int:
    """How deep the objects and arrays of a valid JSON document nest: the gateway's check
    before gateway._core.json_nesting_depth, in C-speed passes over the bytes (the text outside
    strings, its brackets as +1 and -1, the deepest running sum)."""
    if b"\\" in body:  # escapes cannot hide a quote from the split below
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Valid JSON: every other piece between quotes is a string's inside.
    outside = b"".join(body.split(b'"')[::2]) if b'"' in body else body
    shape = outside.translate(_STEPS, _NOT_BRACKETS)
    return max(accumulate(array("b", shape)), default=0)
