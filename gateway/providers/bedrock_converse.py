"""OpenAI chat ⇄ Bedrock Converse (the one request format of every Bedrock chat model), pure.

Request (OpenAI chat → ConverseRequest, camelCase as the Bedrock API reference):
- system and developer messages → `system: [{text}]` (in order);
- user/assistant turns → `messages: [{role, content: [ContentBlock]}]`, consecutive turns of one
  role merged (Converse wants alternation); tool results are user turns holding `toolResult`;
- text parts → `{text}`; image parts → `{image: {format, source: {bytes}}}` from data: URLs
  (png, jpeg, gif, webp; Converse takes no http(s) image URL: a 400 naming the part);
- assistant `tool_calls` → `toolUse {toolUseId, name, input}` (arguments parsed to an object);
  a tool message → `toolResult {toolUseId, content: [{json}]}` when its content is a JSON
  object, else `[{text}]`;
- tools → `toolConfig.tools[].toolSpec {name, description, inputSchema: {json}}`; tool_choice
  auto/required/named → `{auto: {}}` / `{any: {}}` / `{tool: {name}}`; `none` has no Converse
  equivalent and is a 400 naming `tool_choice`;
- `inferenceConfig`: maxTokens (the request's, else 4096), temperature, topP, stopSequences.
`user` is accepted and not sent (Converse has no field for it). Anything else (`n` > 1,
logprobs, seed, penalties, JSON response formats, audio/file parts) is a 400 naming it.

Response: `output.message.content` text blocks joined, `toolUse` blocks → tool calls;
`stopReason` → finish_reason as the Rust reframer maps it; `usage` with cache reads and writes
counted in the prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.billing import TokenUsage, count
from gateway.errors import BadGateway, InvalidRequest
from gateway.providers.base import ChatCall, Completion
from gateway.providers.translate import (
    completion_body,
    is_http_url,
    parse_arguments,
    parse_data_url,
    parts_of,
    raw_fields,
    reject_unsupported,
    stop_list,
    text_of,
    tool_call,
)
from gateway.schemas.openai import ImagePart, Message, NamedToolChoice, RefusalPart, TextPart

SUPPORTED = frozenset({"user"})
IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/gif": "gif", "image/webp": "webp"}
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}


def _image_block(part: ImagePart, param: str) -> dict[str, Any]:
    url = part.image_url.url
    if url.startswith("data:"):
        mime, data = parse_data_url(url, param)
        image_format = IMAGE_FORMATS.get(mime)
        if image_format is None:
            raise InvalidRequest(
                f"Bedrock models accept {', '.join(sorted(IMAGE_FORMATS))} images, not {mime}.",
                param=param,
            )
        # `bytes` is a blob: base64 in the JSON body, as the AWS SDKs send it.
        return {"image": {"format": image_format, "source": {"bytes": data}}}
    if is_http_url(url):
        raise InvalidRequest(
            "Bedrock models take images as data: URLs only (Converse cannot fetch a URL).",
            param=param,
        )
    raise InvalidRequest("An image URL must be a data: URL or an http(s) URL.", param=param)


def _blocks(message: Message, param: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for index, part in enumerate(parts_of(message.content)):
        where = f"{param}.content[{index}]" if isinstance(message.content, list) else param
        if isinstance(part, TextPart):
            if part.text:
                blocks.append({"text": part.text})
        elif isinstance(part, RefusalPart):
            if part.refusal:
                blocks.append({"text": part.refusal})
        elif isinstance(part, ImagePart):
            blocks.append(_image_block(part, where))
        else:
            raise InvalidRequest(
                f"Content parts of type '{type(part).__name__}' are not supported by "
                "Bedrock models.",
                param=where,
            )
    return blocks


def _tool_result(message: Message, param: str) -> dict[str, Any]:
    if not message.tool_call_id:
        raise InvalidRequest("A tool message needs `tool_call_id`.", param=f"{param}.tool_call_id")
    text = text_of(message.content, f"{param}.content")
    try:
        parsed = orjson.loads(text) if text.lstrip().startswith("{") else None
    except orjson.JSONDecodeError:
        parsed = None
    content = [{"json": parsed}] if isinstance(parsed, dict) else [{"text": text}]
    return {"toolResult": {"toolUseId": message.tool_call_id, "content": content}}


def translate_messages(
    messages: list[Message],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, alternating user/assistant messages)."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if message.role in ("system", "developer"):
            text = text_of(message.content, f"{param}.content")
            if text:
                system.append({"text": text})
            continue
        if message.role == "user":
            role, blocks = "user", _blocks(message, param)
        elif message.role == "assistant":
            role, blocks = "assistant", _blocks(message, param)
            for call_index, call in enumerate(message.tool_calls or ()):
                arguments = parse_arguments(
                    call.function.arguments,
                    f"{param}.tool_calls[{call_index}].function.arguments",
                )
                blocks.append(
                    {
                        "toolUse": {
                            "toolUseId": call.id,
                            "name": call.function.name,
                            "input": arguments,
                        }
                    }
                )
        elif message.role == "tool":
            role, blocks = "user", [_tool_result(message, param)]
        else:
            raise InvalidRequest(
                f"Messages with role '{message.role}' are not supported by Bedrock models; "
                "use role 'tool'.",
                param=f"{param}.role",
            )
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return system, turns


def _tool_config(call: ChatCall) -> dict[str, Any]:
    request = call.request
    if request.tool_choice == "none":
        raise InvalidRequest(
            f"'{call.target.model.id}' (Bedrock Converse) has no tool_choice 'none'; "
            "leave out `tools` instead.",
            param="tool_choice",
        )
    if not request.tools:
        return {}
    tools = []
    for tool in request.tools:
        spec: dict[str, Any] = {
            "name": tool.function.name,
            "inputSchema": {"json": tool.function.parameters or {"type": "object"}},
        }
        if tool.function.description:
            spec["description"] = tool.function.description
        tools.append({"toolSpec": spec})
    config: dict[str, Any] = {"tools": tools}
    if isinstance(request.tool_choice, NamedToolChoice):
        config["toolChoice"] = {"tool": {"name": request.tool_choice.function.name}}
    elif request.tool_choice == "required":
        config["toolChoice"] = {"any": {}}
    elif request.tool_choice == "auto":
        config["toolChoice"] = {"auto": {}}
    return {"toolConfig": config}


def translate_request(call: ChatCall) -> dict[str, Any]:
    """The ConverseRequest body for one chat call (pure; raises InvalidRequest)."""
    request = call.request
    fields = raw_fields(call)
    reject_unsupported(call, fields, SUPPORTED)
    if request.response_format is not None and request.response_format.type != "text":
        raise InvalidRequest(
            f"'{call.target.model.id}' cannot honour a JSON `response_format` through Bedrock "
            "Converse; describe the format in the prompt.",
            param="response_format",
        )
    system, messages = translate_messages(request.messages)
    if not messages:
        raise InvalidRequest(
            "Bedrock models need at least one user or assistant message.", param="messages"
        )
    inference: dict[str, Any] = {"maxTokens": request.output_budget}
    if request.temperature is not None:
        inference["temperature"] = request.temperature
    if request.top_p is not None:
        inference["topP"] = request.top_p
    if (stops := stop_list(call)) is not None:
        inference["stopSequences"] = stops
    body: dict[str, Any] = {"messages": messages, "inferenceConfig": inference}
    if system:
        body["system"] = system
    return body | _tool_config(call)


def usage_of(usage: Any) -> tuple[TokenUsage, int]:
    """(usage with cache reads and writes counted in the prompt, cache reads)."""
    if not isinstance(usage, Mapping):
        return TokenUsage(0, 0), 0
    cached = count(usage.get("cacheReadInputTokens"))
    written = count(usage.get("cacheWriteInputTokens"))
    prompt = count(usage.get("inputTokens")) + cached + written
    return TokenUsage(prompt, count(usage.get("outputTokens")), cached, written), cached


def translate_response(call: ChatCall, response: Any) -> Completion:
    output = response.get("output") if isinstance(response, dict) else None
    message = output.get("message") if isinstance(output, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        raise BadGateway("The upstream provider answered without output.message.content.")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        use = block.get("toolUse")
        if isinstance(use, dict):
            calls.append(
                tool_call(str(use.get("toolUseId")), str(use.get("name")), use.get("input") or {})
            )
        # reasoningContent blocks are not content
    usage, cached = usage_of(response.get("usage"))
    reason = STOP_REASONS.get(str(response.get("stopReason") or ""), "stop")
    body = completion_body(call, "".join(texts), calls, reason, usage, cached)
    return Completion(body, usage)
