"""msgspec Structs for the OpenAI Responses API request (`POST /v1/responses`), decoded once.

Declared as OpenAI documents them: `input` as a string or a list of items (messages with
input_text / input_image / output_text parts, `function_call`, `function_call_output`),
`instructions`, function `tools`, `tool_choice`, `parallel_tool_calls`, `text.format`,
`max_output_tokens`, `temperature`, `top_p`, `stream`, `store`, `previous_response_id`,
`metadata`, `user`. Items and tools stay dicts in the request Struct and are validated one by one
(`items()`, `function_tools()`), so that an error names the exact place (`input[2].call_id`) and
an item type the gateway does not serve is a clear 400 of its own.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from gateway.errors import InvalidRequest
from gateway.schemas.decoding import decode_json, split_validation_message


class _Open(Struct, kw_only=True, omit_defaults=True):
    """Unknown fields are ignored by the Struct (and kept in the raw body)."""


class TextFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    name: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class TextConfig(_Open):
    format: TextFormat | None = None


class FunctionTool(_Open):
    type: Literal["function"]
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoice(_Open):
    type: Literal["function"]
    name: Annotated[str, Meta(min_length=1)]


# -- input items --------------------------------------------------------------------------------


class InputText(_Open, tag="input_text", tag_field="type"):
    text: str


class OutputText(_Open, tag="output_text", tag_field="type"):
    text: str


class Refusal(_Open, tag="refusal", tag_field="type"):
    refusal: str


class InputImage(_Open, tag="input_image", tag_field="type"):
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["auto", "low", "high"] | None = None


Part = InputText | OutputText | Refusal | InputImage
# By tag: a part is converted to its own Struct (msgspec collects a union's types and tags
# again on every convert: ~45K instructions a part, against ~5K for one Struct).
PART_TYPES: dict[str, type[Part]] = {
    "input_text": InputText,
    "output_text": OutputText,
    "refusal": Refusal,
    "input_image": InputImage,
}


class MessageItem(_Open):
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[dict[str, Any]]
    id: str | None = None
    status: str | None = None


class FunctionCallItem(_Open):
    call_id: Annotated[str, Meta(min_length=1)]
    name: Annotated[str, Meta(min_length=1)]
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Open):
    call_id: Annotated[str, Meta(min_length=1)]
    output: str | list[dict[str, Any]]
    id: str | None = None
    status: str | None = None


Item = MessageItem | FunctionCallItem | FunctionCallOutputItem
ITEM_TYPES: dict[str, type[Item]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
}
# Items a client replays from an OpenAI answer that carry no content a chat model can read
# (an o-series model's hidden reasoning): dropped, as a chat upstream could not take them.
SKIPPED_ITEMS = frozenset({"reasoning"})


def _convert(raw: object, kind: Any, where: str) -> Any:
    try:
        return msgspec.convert(raw, type=kind)
    except msgspec.ValidationError as exc:
        message, inner = split_validation_message(str(exc))
        param = f"{where}.{inner}" if inner else where
        raise InvalidRequest(f"{message.split(' (at ')[0]} (at {param})", param=param) from exc


def parse_item(raw: dict[str, Any], where: str) -> Item | None:
    """One input item, validated; None for an item that is skipped (reasoning)."""
    kind = raw.get("type", "message")  # EasyInputMessage has no `type`
    if kind in SKIPPED_ITEMS:
        return None
    item_type = ITEM_TYPES.get(kind) if isinstance(kind, str) else None
    if item_type is None:
        raise InvalidRequest(
            f"Input items of type '{kind}' are not supported by this gateway (supported: "
            "message, function_call, function_call_output).",
            param=f"{where}.type",
        )
    item: Item = _convert(raw, item_type, where)
    return item


def parse_parts(content: list[dict[str, Any]], where: str) -> list[Part]:
    parts: list[Part] = []
    for index, raw in enumerate(content):
        kind = raw.get("type")
        at = f"{where}[{index}]"
        part_type = PART_TYPES.get(kind) if isinstance(kind, str) else None
        if part_type is None:
            raise InvalidRequest(
                f"Content parts of type '{kind}' are not supported by this gateway (supported: "
                "input_text, input_image, output_text, refusal).",
                param=f"{at}.type",
            )
        parts.append(_convert(raw, part_type, at))
    return parts


class ResponsesRequest(_Open):
    model: Annotated[str, Meta(min_length=1, max_length=256)]
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    metadata: dict[str, Annotated[str, Meta(max_length=512)]] | None = None
    user: str | None = None

    def function_tools(self) -> list[FunctionTool]:
        tools: list[FunctionTool] = []
        for index, raw in enumerate(self.tools or ()):
            if raw.get("type") != "function":
                raise InvalidRequest(
                    f"Tools of type '{raw.get('type')}' are not supported by this gateway; "
                    "only function tools are.",
                    param=f"tools[{index}].type",
                )
            tools.append(_convert(raw, FunctionTool, f"tools[{index}]"))
        return tools

    def function_choice(self) -> Literal["none", "auto", "required"] | FunctionChoice | None:
        choice = self.tool_choice
        if choice is None or isinstance(choice, str):
            return choice
        if choice.get("type") != "function":
            raise InvalidRequest(
                f"tool_choice of type '{choice.get('type')}' is not supported by this gateway.",
                param="tool_choice.type",
            )
        converted: FunctionChoice = _convert(choice, FunctionChoice, "tool_choice")
        return converted


# Fields of the Responses API this gateway does not implement, with the values that ask for
# nothing (accepted: clients such as the Agents SDK send them routinely). Any other value is a
# 400 naming the field. Fields the API does not have at all are passed on as the chat route
# passes unknown fields (to OpenAI-shaped upstreams; the other kinds apply their own rule).
NEUTRAL: dict[str, tuple[object, ...]] = {
    "background": (False,),
    "include": ([],),
    "truncation": ("disabled", "auto"),
    "service_tier": ("auto", "default"),
    "reasoning": ({}, {"effort": None}, {"effort": None, "summary": None}),
    "conversation": (),
    "prompt": (),
    "max_tool_calls": (),
    "top_logprobs": (0,),
    "context_management": ([],),
    "moderation": (),
}
# Accepted and not forwarded: hints with no effect on a chat model's answer.
IGNORED = frozenset(
    {"prompt_cache_key", "prompt_cache_retention", "safety_identifier", "stream_options"}
)
KNOWN_FIELDS = frozenset(ResponsesRequest.__struct_fields__) | IGNORED | frozenset(NEUTRAL)

_decoder = msgspec.json.Decoder(ResponsesRequest)


def decode_responses_request(body: bytes) -> ResponsesRequest:
    request = decode_json(_decoder, body)
    if request.metadata is not None and len(request.metadata) > 16:
        raise InvalidRequest("metadata holds at most 16 pairs.", param="metadata")
    return request


def check_unsupported(fields: dict[str, Any]) -> None:
    """400 naming the first Responses field set to something this gateway cannot do."""
    for key, neutral in NEUTRAL.items():
        value = fields.get(key)
        if value is not None and value not in neutral:
            raise InvalidRequest(f"`{key}` is not supported by this gateway.", param=key)
