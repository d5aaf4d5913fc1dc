"""Kind `echo` (`klawd/echo`): a local model that answers with the last user message.

It needs no key and no network, streams word by word, is free, and counts usage with the
documented estimate (4 characters per token), so a fresh gateway is useful at once.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import orjson

from gateway.billing import TokenUsage, estimate_tokens
from gateway.providers.base import ChatCall, Completion
from gateway.schemas.openai import TextPart

_WORDS = re.compile(r"\s*\S+\s*")


def _last_user_text(call: ChatCall) -> str:
    for message in reversed(call.request.messages):
        if message.role != "user":
            continue
        if isinstance(message.content, str):
            return message.content
        if message.content:
            return " ".join(p.text for p in message.content if isinstance(p, TextPart))
    return ""


def _answer(call: ChatCall) -> tuple[list[str], str]:
    """The words to send (at most max_tokens of them) and the finish reason."""
    words = _WORDS.findall(_last_user_text(call))
    budget = call.request.output_budget
    if len(words) > budget:
        return words[:budget], "length"
    return words, "stop"


def _usage(call: ChatCall, text: str) -> TokenUsage:
    return TokenUsage(estimate_tokens(call.request.prompt_chars()), estimate_tokens(len(text)))


class EchoProvider:
    def __init__(self, name: str) -> None:
        self.name = name

    async def close(self) -> None:
        return None

    async def complete(self, call: ChatCall) -> Completion:
        words, finish_reason = _answer(call)
        text = "".join(words)
        usage = _usage(call, text)
        body = {
            "id": call.response_id,
            "object": "chat.completion",
            "created": call.created,
            "model": call.target.model.id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            },
        }
        return Completion(body, usage)

    async def stream(self, call: ChatCall) -> EchoStream:
        return EchoStream(call)


class EchoStream:
    def __init__(self, call: ChatCall) -> None:
        self._call = call
        self._sent = ""
        self._done = False

    @property
    def usage(self) -> TokenUsage | None:
        return _usage(self._call, self._sent) if self._done else None

    @property
    def content_chars(self) -> int:
        return len(self._sent)

    async def aclose(self) -> None:
        return None

    def _chunk(self, delta: dict[str, object], finish_reason: str | None) -> bytes:
        call = self._call
        return (
            b"data: "
            + orjson.dumps(
                {
                    "id": call.response_id,
                    "object": "chat.completion.chunk",
                    "created": call.created,
                    "model": call.target.model.id,
                    "choices": [
                        {
                            "index": 0,
                            "delta": delta,
                            "logprobs": None,
                            "finish_reason": finish_reason,
                        }
                    ],
                }
            )
            + b"\n\n"
        )

    async def __aiter__(self) -> AsyncIterator[bytes]:
        call = self._call
        words, finish_reason = _answer(call)
        yield self._chunk({"role": "assistant", "content": ""}, None)
        for word in words:
            self._sent += word
            yield self._chunk({"content": word}, None)
        self._done = True
        yield self._chunk({}, finish_reason)
        if call.request.include_usage:
            usage = _usage(call, self._sent)
            yield (
                b"data: "
                + orjson.dumps(
                    {
                        "id": call.response_id,
                        "object": "chat.completion.chunk",
                        "created": call.created,
                        "model": call.target.model.id,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": usage.prompt_tokens,
                            "completion_tokens": usage.completion_tokens,
                            "total_tokens": usage.total_tokens,
                        },
                    }
                )
                + b"\n\n"
            )
        yield b"data: [DONE]\n\n"
