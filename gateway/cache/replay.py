"""Between a stored answer and a stream, both ways, for chat completions.

- `chat_events`: a stored chat.completion replayed as whole OpenAI SSE events (one chunk with
  each choice's whole message, one with its finish_reason, the usage chunk when the client asked
  for it with stream_options.include_usage, then [DONE]): what the openai SDK accumulates into the
  same message.
- `ChatAssembler`: the chunks a streamed miss relays, gathered into the chat.completion a
  non-streamed request would have got, to be stored. Anything it does not know how to gather
  (logprobs, an error event, an audio delta) makes the answer unstorable rather than stored wrong.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from gateway.billing import TokenUsage
from gateway.providers.base import StreamOver

if TYPE_CHECKING:
    from gateway.providers.base import UpstreamStream

DONE = b"data: [DONE]\n\n"
# Delta fields the assembler gathers; a chunk with any other non-null one is not stored.
GATHERED_DELTA = frozenset({"role", "content", "tool_calls", "refusal"})
GATHERED_CHOICE = frozenset({"index", "delta", "finish_reason", "logprobs"})


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def chat_completion(body: bytes, response_id: str, created: int) -> dict[str, Any]:
    """A stored chat.completion as this request's answer (its own id and time)."""
    completion: dict[str, Any] = orjson.loads(body)
    completion["id"] = response_id
    completion["created"] = created
    return completion


def chat_events(
    body: bytes, response_id: str, created: int, include_usage: bool, cost_usd: float
) -> bytes:
    completion = chat_completion(body, response_id, created)
    head = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": completion.get("model"),
    }
    if completion.get("system_fingerprint") is not None:
        head["system_fingerprint"] = completion["system_fingerprint"]
    out = bytearray()
    choices = completion.get("choices") or []
    deltas = []
    for choice in choices:
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": message.get("role", "assistant")}
        if message.get("content") is not None:
            delta["content"] = message["content"]
        if message.get("refusal") is not None:
            delta["refusal"] = message["refusal"]
        if message.get("tool_calls"):
            delta["tool_calls"] = [
                {"index": i, **call} for i, call in enumerate(message["tool_calls"])
            ]
        deltas.append({"index": choice.get("index", 0), "delta": delta, "finish_reason": None})
    out += _event(head | {"choices": deltas})
    finishes = [
        {"index": c.get("index", 0), "delta": {}, "finish_reason": c.get("finish_reason")}
        for c in choices
    ]
    out += _event(head | {"choices": finishes})
    if include_usage:
        usage = dict(completion.get("usage") or {})
        usage["cost_usd"] = cost_usd
        out += _event(head | {"choices": [], "usage": usage})
    out += DONE
    return bytes(out)


class ChatAssembler:
    """Gathers relayed OpenAI chunk events (whole events per piece, as the relay writes them)."""

    def __init__(self) -> None:
        self.storable = True
        self.done = False
        self._head: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}

    def feed(self, piece: bytes) -> None:
        if not self.storable:
            return
        for event in piece.split(b"\n\n"):
            if not event or event.startswith(b":"):
                continue
            if not event.startswith(b"data: "):
                self.storable = False
                return
            data = event[len(b"data: ") :]
            if data == b"[DONE]":
                self.done = True
                continue
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                self.storable = False
                return
            if not isinstance(chunk, dict) or "error" in chunk:
                self.storable = False
                return
            self._gather(chunk)

    def _gather(self, chunk: dict[str, Any]) -> None:
        if not self._head:
            self._head = {k: chunk.get(k) for k in ("id", "created", "model")}
            if chunk.get("system_fingerprint") is not None:
                self._head["system_fingerprint"] = chunk["system_fingerprint"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            unknown = [k for k, v in delta.items() if v is not None and k not in GATHERED_DELTA]
            extra = [k for k, v in choice.items() if v is not None and k not in GATHERED_CHOICE]
            if unknown or extra or choice.get("logprobs") is not None:
                self.storable = False
                return
            state = self._choices.setdefault(
                int(choice.get("index", 0)),
                {"role": "assistant", "content": [], "refusal": [], "tools": {}, "finish": None},
            )
            if delta.get("role"):
                state["role"] = delta["role"]
            if delta.get("content"):
                state["content"].append(delta["content"])
            if delta.get("refusal"):
                state["refusal"].append(delta["refusal"])
            for call in delta.get("tool_calls") or []:
                tool = state["tools"].setdefault(
                    int(call.get("index", 0)), {"id": None, "name": [], "arguments": []}
                )
                tool["id"] = call.get("id") or tool["id"]
                function = call.get("function") or {}
                if function.get("name"):
                    tool["name"].append(function["name"])
                if function.get("arguments"):
                    tool["arguments"].append(function["arguments"])
            if choice.get("finish_reason") is not None:
                state["finish"] = choice["finish_reason"]

    def completion(self, usage: TokenUsage | None) -> bytes | None:
        """The gathered chat.completion (JSON), or None when the stream is not storable (not
        ended by [DONE], an error, something not gathered)."""
        if not (self.storable and self.done and self._choices):
            return None
        choices = []
        for index in sorted(self._choices):
            state = self._choices[index]
            message: dict[str, Any] = {
                "role": state["role"],
                "content": "".join(state["content"]) if state["content"] else None,
                "refusal": "".join(state["refusal"]) if state["refusal"] else None,
            }
            if state["tools"]:
                message["tool_calls"] = [
                    {
                        "id": tool["id"],
                        "type": "function",
                        "function": {
                            "name": "".join(tool["name"]),
                            "arguments": "".join(tool["arguments"]),
                        },
                    }
                    for _, tool in sorted(state["tools"].items())
                ]
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": state["finish"],
                }
            )
        completion: dict[str, Any] = {
            "id": self._head.get("id"),
            "object": "chat.completion",
            "created": self._head.get("created"),
            "model": self._head.get("model"),
            "choices": choices,
        }
        if "system_fingerprint" in self._head:
            completion["system_fingerprint"] = self._head["system_fingerprint"]
        if usage is not None:
            completion["usage"] = {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            }
        return orjson.dumps(completion)


class AssemblingStream(StreamOver):
    """A provider's OpenAI chunk stream (an UpstreamStream), unchanged, gathered as it goes;
    once it is whole (its [DONE] gathered: the usage is known by then) the answer is `save`d
    before that last piece goes on, so a client that asks again as soon as it has read the end
    finds the entry. Whatever the route makes of the chunks (chat relays them, /v1/messages and
    /v1/responses reframe them) reads this instead of the provider's stream."""

    def __init__(
        self, upstream: UpstreamStream, save: Callable[[bytes, TokenUsage], Awaitable[None]]
    ) -> None:
        super().__init__(upstream)
        self._save = save
        self._assembler = ChatAssembler()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        assembler = self._assembler
        async for piece in self._upstream:
            if not assembler.done:
                assembler.feed(piece)
                if assembler.done:
                    usage = self._upstream.usage
                    answer = assembler.completion(usage)
                    if answer is not None:
                        await self._save(answer, usage or TokenUsage(0, 0))
            yield piece


class ReplayedStream:
    """A stored chat.completion as an UpstreamStream of OpenAI chunks, for the routes that
    reframe chunks into their own events (/v1/messages, /v1/responses)."""

    def __init__(self, body: bytes, usage: TokenUsage, response_id: str, created: int) -> None:
        self._events = chat_events(body, response_id, created, True, 0.0)
        self.usage: TokenUsage | None = usage
        self.content_chars = 0

    async def aclose(self) -> None:
        return None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._events
