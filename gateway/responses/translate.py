"""A Responses API request → the gateway's OpenAI-shaped ChatRequest (pure, no I/O).

`POST /v1/responses` keeps ONE request path: the request is translated to a `ChatRequest` (and
the raw chat body its provider reads), which is routed, admitted, retried, billed and sent by
the chat machinery for every provider kind (docs/decisions/0016-responses-api.md).

Items (this turn's input after the conversation rebuilt from `previous_response_id`) → messages:
- `instructions` → the first system message (this turn only, as OpenAI does);
- message items: system and developer → system; user → text and image parts (`input_image`
  with a URL or data: URL; `file_id` needs OpenAI's Files API: 400); assistant (output_text,
  refusal) → assistant text;
- `function_call` → a tool call of the assistant message before it (or a new one), and
  `function_call_output` → a `tool` message; `reasoning` items are dropped.
Tools: function tools → chat tools; `tool_choice` → the chat one; `text.format` →
`response_format`; `max_output_tokens` → `max_tokens`; `user`, `temperature`, `top_p` as they
are; `parallel_tool_calls` is passed in the chat body; `metadata` stays with the gateway.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import msgspec
import orjson
from msgspec import Struct

from gateway import ids
from gateway.errors import InvalidRequest
from gateway.schemas.openai import (
    ChatRequest,
    ContentPart,
    FunctionCall,
    FunctionDef,
    ImagePart,
    ImageUrl,
    Message,
    NamedFunction,
    NamedToolChoice,
    ResponseFormat,
    StreamOptions,
    TextPart,
    Tool,
    ToolCall,
    chat_body,
)
from gateway.schemas.responses import (
    KNOWN_FIELDS,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionChoice,
    InputImage,
    InputText,
    Item,
    MessageItem,
    OutputText,
    Refusal,
    ResponsesRequest,
    TextFormat,
    check_unsupported,
    parse_item,
    parse_parts,
)


def new_item_id(prefix: str) -> str:
    return ids.new_id(f"{prefix}_", 12)


ITEM_ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}


def normalize_input(request: ResponsesRequest) -> list[dict[str, Any]]:
    """This turn's input as stored items (what `input_items` lists): each with an id, a type
    and a status; string content becomes one text part. Validates every item and part."""
    return read_input(request)[0]


def read_input(request: ResponsesRequest) -> tuple[list[dict[str, Any]], list[Item]]:
    """`normalize_input`, and each stored item as it was parsed (for `to_chat_request`'s
    `turn`: not parsed again)."""
    raw_items = (
        [{"type": "message", "role": "user", "content": request.input}]
        if isinstance(request.input, str)
        else request.input
    )
    items: list[dict[str, Any]] = []
    parsed: list[Item] = []
    for index, raw in enumerate(raw_items):
        where = f"input[{index}]"
        if not isinstance(raw, dict):
            raise InvalidRequest("Each input item must be an object.", param=where)
        item = parse_item(raw, where)
        if item is None:
            continue
        stored: dict[str, Any] = dict(raw)
        if isinstance(item, MessageItem):
            stored["type"] = "message"
            stored["content"] = _normalized_content(item, where)
        kind = stored["type"]
        stored["id"] = item.id or new_item_id(ITEM_ID_PREFIX[kind])
        stored["status"] = item.status or "completed"
        items.append(stored)
        parsed.append(item)
    if not items:
        raise InvalidRequest("`input` holds no item a chat model can read.", param="input")
    return items, parsed


def _normalized_content(item: MessageItem, where: str) -> list[dict[str, Any]]:
    if isinstance(item.content, str):
        if item.role == "assistant":
            return [{"type": "output_text", "text": item.content, "annotations": []}]
        return [{"type": "input_text", "text": item.content}]
    parse_parts(item.content, f"{where}.content")
    return item.content


class Translation(Struct, frozen=True):
    chat: ChatRequest  # routing, admission, and the provider call
    body: bytes  # the chat body the provider reads as the client's raw body


def to_chat_request(
    request: ResponsesRequest,
    fields: dict[str, Any],
    conversation: list[dict[str, Any]],
    turn: Sequence[Item] = (),
) -> Translation:
    """The chat request for `conversation` (earlier turns' items, as stored items) and then
    `turn` (this turn's input as `read_input` parsed it; named as if it were part of the
    conversation) under this request's settings. `fields` is the raw request body."""
    check_unsupported(fields)
    messages: list[Message] = []
    if request.instructions:
        messages.append(Message(role="system", content=request.instructions))
    for index, raw in enumerate(conversation):
        _append_item(messages, parse_item(raw, f"input[{index}]"), f"input[{index}]")
    for index, item in enumerate(turn, len(conversation)):
        _append_item(messages, item, f"input[{index}]")
    tools = [
        Tool(
            function=FunctionDef(
                name=t.name, description=t.description, parameters=t.parameters, strict=t.strict
            )
        )
        for t in request.function_tools()
    ]
    chat = ChatRequest(
        model=request.model,
        messages=messages or [Message(role="user", content="")],
        max_tokens=request.max_output_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        stream=request.stream,
        stream_options=StreamOptions(include_usage=True) if request.stream else None,
        tools=tools or None,
        tool_choice=_tool_choice(request.function_choice()),
        response_format=_response_format(request),
        user=request.user,
    )
    body = chat_body(chat)
    if request.parallel_tool_calls is not None and tools:
        body["parallel_tool_calls"] = request.parallel_tool_calls
    for key, value in fields.items():
        if key not in KNOWN_FIELDS:
            body[key] = value
    return Translation(chat, orjson.dumps(body))


def _tool_choice(
    choice: Literal["none", "auto", "required"] | FunctionChoice | None,
) -> Literal["none", "auto", "required"] | NamedToolChoice | None:
    if isinstance(choice, FunctionChoice):
        return NamedToolChoice(function=NamedFunction(name=choice.name))
    return choice


def _response_format(request: ResponsesRequest) -> ResponseFormat | None:
    text_format = request.text.format if request.text is not None else None
    if text_format is None or text_format.type == "text":
        return None
    if text_format.type == "json_object":
        return ResponseFormat(type="json_object")
    if text_format.name is None or text_format.schema is None:
        raise InvalidRequest(
            "text.format of type json_schema needs a name and a schema.", param="text.format"
        )
    json_schema: dict[str, Any] = {"name": text_format.name, "schema": text_format.schema}
    if text_format.description is not None:
        json_schema["description"] = text_format.description
    if text_format.strict is not None:
        json_schema["strict"] = text_format.strict
    return ResponseFormat(type="json_schema", json_schema=json_schema)


def text_format_body(text_format: TextFormat | None) -> dict[str, Any]:
    """`text.format` as the response object echoes it."""
    if text_format is None:
        return {"type": "text"}
    return msgspec.to_builtins(text_format)  # type: ignore[no-any-return]


def _append_item(messages: list[Message], item: Item | None, where: str) -> None:
    if item is None:
        return
    if isinstance(item, MessageItem):
        messages.append(_message(item, where))
    elif isinstance(item, FunctionCallItem):
        call = ToolCall(
            id=item.call_id, function=FunctionCall(name=item.name, arguments=item.arguments)
        )
        last = messages[-1] if messages else None
        if last is not None and last.role == "assistant":
            messages[-1] = Message(
                role="assistant", content=last.content, tool_calls=[*(last.tool_calls or ()), call]
            )
        else:
            messages.append(Message(role="assistant", tool_calls=[call]))
    elif isinstance(item, FunctionCallOutputItem):
        messages.append(
            Message(
                role="tool",
                tool_call_id=item.call_id,
                content=_output_text(item, f"{where}.output"),
            )
        )


def _output_text(item: FunctionCallOutputItem, where: str) -> str:
    if isinstance(item.output, str):
        return item.output
    texts: list[str] = []
    for part in parse_parts(item.output, where):
        if not isinstance(part, (InputText, OutputText)):
            raise InvalidRequest(
                "Function call outputs can hold only text parts when sent to a chat model.",
                param=where,
            )
        texts.append(part.text)
    return "".join(texts)


def _message(item: MessageItem, where: str) -> Message:
    role = "system" if item.role == "developer" else item.role
    if isinstance(item.content, str):
        return Message(role=role, content=item.content)
    parts = parse_parts(item.content, f"{where}.content")
    if role != "user":
        texts: list[str] = []
        for index, part in enumerate(parts):
            if isinstance(part, InputImage):
                raise InvalidRequest(
                    f"Images can only be sent in user messages, not {item.role} ones.",
                    param=f"{where}.content[{index}]",
                )
            texts.append(part.refusal if isinstance(part, Refusal) else part.text)
        return Message(role=role, content="".join(texts))
    content: list[ContentPart] = []
    for index, part in enumerate(parts):
        if isinstance(part, InputImage):
            if not part.image_url:
                raise InvalidRequest(
                    "input_image needs an image_url (an https or data: URL); file_id needs "
                    "OpenAI's Files API, which this gateway does not serve.",
                    param=f"{where}.content[{index}].image_url",
                )
            content.append(ImagePart(image_url=ImageUrl(url=part.image_url, detail=part.detail)))
        else:
            content.append(TextPart(text=part.refusal if isinstance(part, Refusal) else part.text))
    if len(content) == 1 and isinstance(content[0], TextPart):
        return Message(role="user", content=content[0].text)
    return Message(role="user", content=content)


# A provider's 400 names the chat request's parameter; the client sent the Responses one.
_RESPONSES_PARAMS = {
    "response_format": "text.format",
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "messages": "input",  # message indices are not input indices: the field only
}


def responses_param(param: str | None) -> str | None:
    if param is None:
        return None
    head = param.split(".", 1)[0].split("[", 1)[0]
    return _RESPONSES_PARAMS.get(head, param)
