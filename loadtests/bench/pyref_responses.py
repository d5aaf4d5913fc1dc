"""Pure-Python reference of the Rust reframer `openai_to_responses` (the gateway's OpenAI chunks →
OpenAI Responses API events), written plainly: the baseline of `core_bench.py` and the
differential oracle of `tests/core/test_responses_events.py`. Same rules as
rust_core/src/reframe/to_responses.rs (and gateway/responses/answer.py for the shapes)."""

from __future__ import annotations

from typing import Any

import orjson
from pyref import SseError, _FromOpenAI

INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _typed_event(kind: str, sequence: int, obj: dict[str, Any]) -> bytes:
    data = {"type": kind, "sequence_number": sequence, **obj}
    return f"event: {kind}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


class ToResponsesRef(_FromOpenAI):
    def __init__(
        self,
        model: str,
        response_id: str,
        created: int,
        include_usage: bool,
        max_event_bytes: int = 1 << 20,
        response_fields: str | None = None,
    ) -> None:
        super().__init__(model, response_id, created, include_usage, max_event_bytes)
        self.fields: dict[str, Any] = orjson.loads(response_fields or "{}")
        self.stem = response_id.split("_", 1)[1] if "_" in response_id else response_id
        self.sequence = 0
        self.started = False
        self.open: str | int | None = None  # "message", a tool-call index, or nothing
        self.index = 0
        self.item: dict[str, Any] = {}
        self.text = ""
        self.tools: list[int] = []
        self.output: list[dict[str, Any]] = []

    def _emit(self, out: list[bytes], kind: str, obj: dict[str, Any]) -> None:
        out.append(_typed_event(kind, self.sequence, obj))
        self.sequence += 1

    def _response(
        self, status: str, incomplete: str | None, usage: dict[str, Any] | None
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "model": self.model,
            "status": status,
            "error": None,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "output": list(self.output) if usage is not None else [],
            "usage": usage,
            **self.fields,
        }

    def _start(self, out: list[bytes]) -> None:
        if not self.started:
            self.started = True
            for kind in ("response.created", "response.in_progress"):
                self._emit(out, kind, {"response": self._response("in_progress", None, None)})

    def _ref(self) -> dict[str, Any]:
        return {"item_id": self.item["id"], "output_index": self.index}

    def _part(self) -> dict[str, Any]:
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": self.text}

    def _open(self, out: list[bytes], kind: str | int, call_id: str = "", name: str = "") -> None:
        self._close(out)
        self.open, self.text = kind, ""
        if kind == "message":
            self.item = {
                "id": f"msg_{self.stem}_{self.index}",
                "type": "message",
                "status": "in_progress",
                "content": [],
                "role": "assistant",
            }
        else:
            self.item = {
                "id": f"fc_{self.stem}_{self.index}",
                "type": "function_call",
                "status": "in_progress",
                "arguments": "",
                "call_id": call_id or f"call_{self.stem}_{self.index}",
                "name": name,
            }
        added = {"output_index": self.index, "item": self.item}
        self._emit(out, "response.output_item.added", added)
        if kind == "message":
            part = self._ref() | {"content_index": 0, "part": self._part()}
            self._emit(out, "response.content_part.added", part)

    def _close(self, out: list[bytes]) -> None:
        if self.open is None:
            return
        if self.open == "message":
            done = self._ref() | {"content_index": 0, "text": self.text, "logprobs": []}
            self._emit(out, "response.output_text.done", done)
            part = self._ref() | {"content_index": 0, "part": self._part()}
            self._emit(out, "response.content_part.done", part)
            item = self.item | {"status": "completed", "content": [self._part()]}
        else:
            self._emit(
                out, "response.function_call_arguments.done", self._ref() | {"arguments": self.text}
            )
            item = self.item | {"status": "completed", "arguments": self.text}
        self._emit(out, "response.output_item.done", {"output_index": self.index, "item": item})
        self.output.append(item)
        self.open = None
        self.index += 1

    def on_event(self, name: str, data: str, out: list[bytes]) -> None:
        if data.strip(" \t\r\n") == "[DONE]":
            self._start(out)
            self._close(out)
            u = self.usage or {"prompt_tokens": 0, "completion_tokens": 0}
            usage = {
                "input_tokens": u["prompt_tokens"],
                "input_tokens_details": {
                    "cached_tokens": self.cached,
                    "cache_write_tokens": self.written,
                },
                "output_tokens": u["completion_tokens"],
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": u["prompt_tokens"] + u["completion_tokens"],
            }
            incomplete = INCOMPLETE.get(self.finish_reason or "")
            kind = "response.incomplete" if incomplete else "response.completed"
            status = "incomplete" if incomplete else "completed"
            self._emit(out, kind, {"response": self._response(status, incomplete, usage)})
            self.done = True
            return
        for choice in self._choices(data):
            self._start(out)
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if self.open != "message":
                    self._open(out, "message")
                self.content_chars += len(text)
                self.text += text
                delta_event = self._ref() | {"content_index": 0, "delta": text, "logprobs": []}
                self._emit(out, "response.output_text.delta", delta_event)
            for call in delta.get("tool_calls") or []:
                index = call.get("index") or 0
                function = call.get("function") or {}
                if self.open != index:
                    if index in self.tools:
                        raise SseError("tool call continued after another output item started")
                    self.tools.append(index)
                    self._open(out, index, call.get("id") or "", function.get("name") or "")
                arguments = function.get("arguments")
                if arguments:
                    self.content_chars += len(arguments)
                    self.text += arguments
                    self._emit(
                        out,
                        "response.function_call_arguments.delta",
                        self._ref() | {"delta": arguments},
                    )
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
