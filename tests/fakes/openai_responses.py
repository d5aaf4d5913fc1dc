"""The fake OpenAI upstream's `POST /v1/responses` (OpenAI's Responses API, byte-exact as the
official SDK reads it), written out by hand: it shares no code with the gateway's translation.

    gpt-fake     a message with ANSWER_WORDS; streamed: created, in_progress, the item and its
                 part added, one output_text.delta per word, the dones, completed (in awkward
                 TCP pieces)
    tools-fake   one function_call item (TOOL_CALL's name and arguments); streamed: the
                 arguments in fragments
"""

from __future__ import annotations

from typing import Any

import orjson

from tests.fakes.openai_upstream import ANSWER_WORDS, TOOL_CALL

RESPONSE_ID = "resp_upstream123"
USAGE = {
    "input_tokens": 12,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 4,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 16,
}


def _message(text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}]
    return {
        "id": "msg_upstream1",
        "type": "message",
        "status": status,
        "content": content if status == "completed" else [],
        "role": "assistant",
    }


def _call(arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": "fc_upstream1",
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": TOOL_CALL["id"],
        "name": TOOL_CALL["function"]["name"],  # type: ignore[index]
    }


def response(body: dict[str, Any], status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": RESPONSE_ID,
        "object": "response",
        "created_at": 1700000000,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body.get("model"),
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": USAGE if status == "completed" else None,
        "user": None,
        "metadata": {},
    }


def whole(body: dict[str, Any]) -> dict[str, Any]:
    if body.get("model") == "tools-fake":
        arguments = TOOL_CALL["function"]["arguments"]  # type: ignore[index]
        return response(body, "completed", [_call(arguments, "completed")])
    return response(body, "completed", [_message("".join(ANSWER_WORDS), "completed")])


def events(body: dict[str, Any]) -> list[bytes]:
    out: list[dict[str, Any]] = [
        {"type": "response.created", "response": response(body, "in_progress", [])},
        {"type": "response.in_progress", "response": response(body, "in_progress", [])},
    ]
    if body.get("model") == "tools-fake":
        arguments: str = TOOL_CALL["function"]["arguments"]  # type: ignore[index]
        item = {"output_index": 0, "item_id": "fc_upstream1"}
        out.append(
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": _call("", "in_progress"),
            }
        )
        for at in range(0, len(arguments), 5):
            delta = arguments[at : at + 5]
            out.append({"type": "response.function_call_arguments.delta", **item, "delta": delta})
        out.append(
            {"type": "response.function_call_arguments.done", **item, "arguments": arguments}
        )
        out.append(
            {
                "type": "response.output_item.done",
                "output_index": 0,
                "item": _call(arguments, "completed"),
            }
        )
    else:
        text = "".join(ANSWER_WORDS)
        item = {"output_index": 0, "item_id": "msg_upstream1", "content_index": 0}
        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
        out.append(
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": _message("", "in_progress"),
            }
        )
        out.append({"type": "response.content_part.added", **item, "part": part})
        for word in ANSWER_WORDS:
            out.append(
                {"type": "response.output_text.delta", **item, "delta": word, "logprobs": []}
            )
        out.append({"type": "response.output_text.done", **item, "text": text, "logprobs": []})
        out.append({"type": "response.content_part.done", **item, "part": part | {"text": text}})
        out.append(
            {
                "type": "response.output_item.done",
                "output_index": 0,
                "item": _message(text, "completed"),
            }
        )
    out.append({"type": "response.completed", "response": whole(body)})
    return [
        b"event: "
        + e["type"].encode()
        + b"\ndata: "
        + orjson.dumps(e | {"sequence_number": n})
        + b"\n\n"
        for n, e in enumerate(out)
    ]
