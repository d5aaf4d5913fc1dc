"""Kind `gemini`: the Gemini API (`{base_url}/v1beta/models/{m}:generateContent`, and
`:streamGenerateContent?alt=sse` for streams, which go through the Rust reframer "gemini").

Request translation (OpenAI chat → GenerateContentRequest, camelCase as the REST reference):
- system and developer messages → `systemInstruction.parts` (one text part each, in order);
- roles: user → `user`, assistant → `model`, tool results → `user` turns holding
  `functionResponse` parts; consecutive turns of one role are merged (Gemini wants alternation);
- text parts → `{text}`; image parts: data: URLs → `inlineData`, http(s) URLs → `fileData`
  (mime type from the URL's extension, image/jpeg when it has none); `input_audio` → `inlineData`;
- assistant `tool_calls` → `functionCall` parts; a tool message's `tool_call_id` is resolved to
  the function name of the call it answers (Gemini matches results by name); its content becomes
  `response` (the JSON object itself when the content is one, else `{"content": text}`);
- tools → one `functionDeclarations` tool, schemas sent as `parametersJsonSchema` (full JSON
  Schema); tool_choice auto/none/required/named → `toolConfig.functionCallingConfig` mode
  AUTO/NONE/ANY (+ `allowedFunctionNames`);
- `generationConfig`: temperature (0-2, as OpenAI), topP, maxOutputTokens (the request's, else
  4096), stopSequences, seed, presencePenalty, frequencyPenalty, and response_format json_object
  → `responseMimeType: application/json` (json_schema adds `responseJsonSchema`).
Anything else (`n` > 1, logprobs, `parallel_tool_calls: false`, file parts) is a 400 naming it.

A request is translated by one scan in Rust (`_core.gemini_chat_request`,
rust_core/src/gemini_body/) where it can tell — what agents send: text, tools, tool calls and
results, data-URL images — byte for byte what `translate_request` and orjson write; the
functions below are the reference and take the rest (and every refusal).
"""

from __future__ import annotations

import functools
import mimetypes
import re
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import orjson

from gateway import _core
from gateway.billing import TokenUsage, count, estimate_tokens
from gateway.errors import (
    BadGateway,
    GatewayError,
    GatewayTimeout,
    InvalidRequest,
    RateLimited,
    ServiceUnavailable,
)
from gateway.providers.base import (
    ChatCall,
    Completion,
    EmbeddingCall,
    EmbeddingResult,
    HttpProvider,
    UpstreamRequest,
    retry_after_from,
    status_error,
)
from gateway.providers.http_client import FixedHeaders
from gateway.providers.translate import (
    completion_body,
    error_message,
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
from gateway.schemas.embeddings import encode_embedding
from gateway.schemas.openai import (
    DEFAULT_MAX_TOKENS,
    ImagePart,
    InputAudioPart,
    Message,
    NamedToolChoice,
    RefusalPart,
    TextPart,
)

# Accepted and forwarded; `user` is accepted but Gemini has no field for it (documented).
SUPPORTED = frozenset({"seed", "presence_penalty", "frequency_penalty", "user"})

FILTERED = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}
)


def finish_reason(reason: object, has_tool_calls: bool) -> str:
    """Gemini `finishReason` → OpenAI `finish_reason` (the reframer's table, non-streamed); a
    reason that is not a string is no reason."""
    if reason == "MAX_TOKENS":
        return "length"
    if type(reason) is str and reason in FILTERED:
        return "content_filter"
    return "tool_calls" if has_tool_calls else "stop"


# -- request ------------------------------------------------------------------------------------


def _image_part(part: ImagePart, param: str) -> dict[str, Any]:
    url = part.image_url.url
    if url.startswith("data:"):
        mime, data = parse_data_url(url, param)
        return {"inlineData": {"mimeType": mime, "data": data}}
    if is_http_url(url):
        guessed, _ = mimetypes.guess_type(urlsplit(url).path)
        return {"fileData": {"mimeType": guessed or "image/jpeg", "fileUri": url}}
    raise InvalidRequest("An image URL must be a data: URL or an http(s) URL.", param=param)


def _audio_part(part: InputAudioPart, param: str) -> dict[str, Any]:
    data = part.input_audio.get("data")
    audio_format = part.input_audio.get("format")
    if not isinstance(data, str) or not isinstance(audio_format, str):
        raise InvalidRequest("`input_audio` needs `data` and `format`.", param=param)
    mime = {"mp3": "audio/mp3", "wav": "audio/wav"}.get(audio_format, f"audio/{audio_format}")
    return {"inlineData": {"mimeType": mime, "data": data}}


def _parts(message: Message, param: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for index, part in enumerate(parts_of(message.content)):
        where = f"{param}.content[{index}]" if isinstance(message.content, list) else param
        if isinstance(part, TextPart):
            if part.text:
                parts.append({"text": part.text})
        elif isinstance(part, RefusalPart):
            if part.refusal:
                parts.append({"text": part.refusal})
        elif isinstance(part, ImagePart):
            parts.append(_image_part(part, where))
        elif isinstance(part, InputAudioPart):
            parts.append(_audio_part(part, where))
        else:
            raise InvalidRequest(
                f"Content parts of type '{type(part).__name__}' are not supported by "
                "Gemini models.",
                param=where,
            )
    return parts


def _function_response(message: Message, param: str, names: Mapping[str, str]) -> dict[str, Any]:
    name = names.get(message.tool_call_id or "") or message.name
    if not name:
        raise InvalidRequest(
            "A tool message must answer a tool call of an earlier assistant message "
            "(its `tool_call_id` names no known call).",
            param=f"{param}.tool_call_id",
        )
    text = text_of(message.content, f"{param}.content")
    try:
        parsed = orjson.loads(text) if text.lstrip().startswith("{") else None
    except orjson.JSONDecodeError:
        parsed = None
    response = parsed if isinstance(parsed, dict) else {"content": text}
    return {"functionResponse": {"name": name, "response": response}}


def translate_messages(
    messages: list[Message],
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(systemInstruction or None, alternating user/model contents)."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id -> function name
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if message.role in ("system", "developer"):
            text = text_of(message.content, f"{param}.content")
            if text:
                system.append({"text": text})
            continue
        if message.role == "user":
            role, parts = "user", _parts(message, param)
        elif message.role == "assistant":
            role, parts = "model", _parts(message, param)
            for call_index, call in enumerate(message.tool_calls or ()):
                names[call.id] = call.function.name
                arguments = parse_arguments(
                    call.function.arguments,
                    f"{param}.tool_calls[{call_index}].function.arguments",
                )
                parts.append({"functionCall": {"name": call.function.name, "args": arguments}})
        elif message.role == "tool":
            role, parts = "user", [_function_response(message, param, names)]
        else:
            raise InvalidRequest(
                f"Messages with role '{message.role}' are not supported by Gemini models; "
                "use role 'tool'.",
                param=f"{param}.role",
            )
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return ({"parts": system} if system else None), contents


def _tools(call: ChatCall, fields: Mapping[str, Any]) -> dict[str, Any]:
    request = call.request
    out: dict[str, Any] = {}
    if fields.get("parallel_tool_calls") is False:
        raise InvalidRequest(
            f"'{call.target.model.id}' cannot turn off parallel tool calls.",
            param="parallel_tool_calls",
        )
    if request.tools:
        declarations = []
        for tool in request.tools:
            declaration: dict[str, Any] = {"name": tool.function.name}
            if tool.function.description:
                declaration["description"] = tool.function.description
            if tool.function.parameters:
                declaration["parametersJsonSchema"] = tool.function.parameters
            declarations.append(declaration)
        out["tools"] = [{"functionDeclarations": declarations}]
    if isinstance(request.tool_choice, NamedToolChoice):
        config: dict[str, Any] = {
            "mode": "ANY",
            "allowedFunctionNames": [request.tool_choice.function.name],
        }
        out["toolConfig"] = {"functionCallingConfig": config}
    elif request.tool_choice is not None:
        mode = {"auto": "AUTO", "none": "NONE", "required": "ANY"}[request.tool_choice]
        out["toolConfig"] = {"functionCallingConfig": {"mode": mode}}
    return out


def _generation_config(call: ChatCall, fields: Mapping[str, Any]) -> dict[str, Any]:
    request = call.request
    config: dict[str, Any] = {"maxOutputTokens": request.output_budget}
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.top_p is not None:
        config["topP"] = request.top_p
    if (stops := stop_list(call)) is not None:
        config["stopSequences"] = stops
    if request.seed is not None:
        config["seed"] = request.seed
    for field, name in (
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        value = fields.get(field)
        if value is not None:
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise InvalidRequest(f"`{field}` must be a number.", param=field)
            config[name] = value
    response_format = request.response_format
    if response_format is not None and response_format.type != "text":
        config["responseMimeType"] = "application/json"
        if response_format.type == "json_schema":
            schema = (response_format.json_schema or {}).get("schema")
            if not isinstance(schema, dict):
                raise InvalidRequest(
                    "`response_format.json_schema.schema` must be a JSON Schema object.",
                    param="response_format.json_schema.schema",
                )
            config["responseJsonSchema"] = schema
    return config


def translate_request(call: ChatCall) -> dict[str, Any]:
    """The GenerateContentRequest body for one chat call (pure; raises InvalidRequest)."""
    fields = raw_fields(call)
    reject_unsupported(call, fields, SUPPORTED)
    system, contents = translate_messages(call.request.messages)
    if not contents:
        raise InvalidRequest(
            "Gemini models need at least one user or assistant message.", param="messages"
        )
    body: dict[str, Any] = {"contents": contents}
    if system is not None:
        body["systemInstruction"] = system
    body |= _tools(call, fields)
    body["generationConfig"] = _generation_config(call, fields)
    return body


# -- response -----------------------------------------------------------------------------------


def usage_of(metadata: Any) -> tuple[TokenUsage, int]:
    """(usage, cached prompt tokens); thinking tokens count as completion tokens."""
    if not isinstance(metadata, dict):
        return TokenUsage(0, 0), 0
    completion = count(metadata.get("candidatesTokenCount")) + count(
        metadata.get("thoughtsTokenCount")
    )
    prompt = count(metadata.get("promptTokenCount"))
    cached = count(metadata.get("cachedContentTokenCount"))
    return TokenUsage(prompt, completion, cached), cached


def translate_response(call: ChatCall, response: Any) -> Completion:
    if not isinstance(response, dict):
        raise BadGateway("The upstream provider answered with something other than an object.")
    usage, cached = usage_of(response.get("usageMetadata"))
    candidates = response.get("candidates")
    if not candidates:
        feedback = response.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            body = completion_body(call, "", [], "content_filter", usage, cached)
            return Completion(body, usage)
        raise BadGateway("The upstream provider answered without candidates.")
    candidate = candidates[0] if isinstance(candidates, list) else None
    if not isinstance(candidate, dict):
        raise BadGateway("The upstream provider answered with a malformed candidate.")
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    response_id = call.response_id  # as the reframer names streamed calls
    for part in parts if isinstance(parts, list) else ():
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str) and not part.get("thought"):
            texts.append(part["text"])
        function = part.get("functionCall")
        if isinstance(function, dict):
            calls.append(
                tool_call(
                    f"call_{response_id}_{len(calls)}",
                    str(function.get("name") or ""),
                    function.get("args") or {},
                )
            )
    reason = finish_reason(candidate.get("finishReason"), bool(calls))
    return Completion(completion_body(call, "".join(texts), calls, reason, usage, cached), usage)


# -- errors -------------------------------------------------------------------------------------

_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)s$")


def _details(parsed: Any) -> list[Any]:
    """An error body's `error.details` (an empty list when the body is shaped otherwise)."""
    error = parsed.get("error") if isinstance(parsed, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    return details if isinstance(details, list) else []


def retry_delay(parsed: Any) -> float | None:
    """`google.rpc.RetryInfo.retryDelay` ("34s") from an error's details, if any."""
    for detail in _details(parsed):
        if isinstance(detail, dict) and isinstance(detail.get("retryDelay"), str):
            match = _DURATION.match(detail["retryDelay"])
            if match:
                return float(match.group(1))
    return None


def _is_key_problem(parsed: Any) -> bool:
    """Gemini answers a bad API key with 400 INVALID_ARGUMENT + reason API_KEY_INVALID."""
    return any(
        isinstance(d, dict) and str(d.get("reason", "")).startswith("API_KEY")
        for d in _details(parsed)
    )


def error_for(
    provider: str, status: str, message: str | None, retry_after: float | None
) -> GatewayError | None:
    """A google.rpc status name → the gateway's error; None for an unknown one."""
    if status == "INVALID_ARGUMENT" or status == "OUT_OF_RANGE":
        return InvalidRequest(message or f"The upstream provider '{provider}' refused the request.")
    if status in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return BadGateway(
            f"The upstream provider '{provider}' refused the gateway's credentials "
            "(the operator's provider key, not yours)."
        )
    if status == "FAILED_PRECONDITION":
        return BadGateway(
            f"The upstream provider '{provider}' cannot serve the operator's account: "
            f"{message or 'failed precondition'}"
        )
    if status == "NOT_FOUND":
        return BadGateway(f"The upstream provider '{provider}' does not know the configured model.")
    if status == "RESOURCE_EXHAUSTED":
        return RateLimited(
            f"The upstream provider '{provider}' is rate limiting the gateway; retry later.",
            retry_after_s=retry_after if retry_after is not None else 1.0,
            retryable=True,
        )
    if status in ("UNAVAILABLE", "INTERNAL", "UNKNOWN", "ABORTED"):
        return ServiceUnavailable(
            f"The upstream provider '{provider}' is unavailable ({status}); retry later.",
            retry_after_s=retry_after,
            retryable=True,
        )
    if status == "DEADLINE_EXCEEDED":
        return GatewayTimeout(f"The upstream provider '{provider}' timed out.", retryable=True)
    return None


class GeminiProvider(HttpProvider):
    reframer_kind: ClassVar[str] = "gemini"

    # Built once per provider (settings and key are fixed for the app's life), never changed
    # (tracing copies them to add its own): a single answer's headers and a stream's.
    @functools.cached_property
    def _chat_headers(self) -> tuple[FixedHeaders, FixedHeaders]:
        def headers(accept: str) -> FixedHeaders:
            fixed = {"content-type": "application/json", "accept": accept}
            if self.api_key is not None:
                fixed["x-goog-api-key"] = self.api_key.reveal()
            return FixedHeaders(fixed)

        return headers("application/json"), headers("text/event-stream")

    @functools.cached_property
    def _chat_urls(self) -> dict[tuple[str, bool], str]:
        """Each upstream model's URL of a single answer and of a stream, made on first use
        (the catalog's models: a bounded set)."""
        return {}

    def build_request(self, call: ChatCall, stream: bool) -> UpstreamRequest:
        model = call.target.model.upstream_model or call.target.model.id.split("/", 1)[1]
        url = self._chat_urls.get((model, stream))
        if url is None:
            method = "streamGenerateContent?alt=sse" if stream else "generateContent"
            url = f"{self.settings.base_url.rstrip('/')}/v1beta/models/{quote(model, safe='')}:"
            url = self._chat_urls[model, stream] = f"{url}{method}"
        # One scan in Rust writes what translate_request and orjson write; a body it cannot
        # tell about (an http(s) image, escaped keys, ...) takes them: the messages are then
        # decoded (they are not, on the scan's path).
        body = _core.gemini_chat_request(call.body, DEFAULT_MAX_TOKENS)
        if body is None:
            body = orjson.dumps(translate_request(call))
        return UpstreamRequest(url=url, headers=self._chat_headers[stream], body=body)

    async def embed(self, call: EmbeddingCall) -> EmbeddingResult:
        """`POST {base_url}/v1beta/models/{m}:batchEmbedContents`, one request per input;
        `dimensions` → `outputDimensionality`. Gemini takes text only (token arrays are a 400)
        and its answer carries no token count unless `usageMetadata` is present: the prompt
        tokens billed are then the gateway's estimate (4 characters per token)."""
        request = call.request
        texts = request.texts
        if texts is None:
            raise InvalidRequest(
                f"'{call.target.model.id}' embeds text only, not token arrays.", param="input"
            )
        model = call.target.model.upstream_model or call.target.model.id.split("/", 1)[1]
        one: dict[str, Any] = {"model": f"models/{model}"}
        if request.dimensions is not None:
            one["outputDimensionality"] = request.dimensions
        body = {"requests": [one | {"content": {"parts": [{"text": t}]}} for t in texts]}
        headers = {"content-type": "application/json", "accept": "application/json"}
        if self.api_key is not None:
            headers["x-goog-api-key"] = self.api_key.reveal()
        answer = await self._send_json(
            UpstreamRequest(
                url=f"{self.settings.base_url.rstrip('/')}/v1beta/models/"
                f"{quote(model, safe='')}:batchEmbedContents",
                headers=headers,
                body=orjson.dumps(body),
            )
        )
        embeddings = answer.get("embeddings") if isinstance(answer, dict) else None
        if not isinstance(embeddings, list) or len(embeddings) != len(texts):
            raise BadGateway(
                f"The upstream provider '{self.name}' answered without one embedding per input."
            )
        vectors: list[list[float]] = []
        for item in embeddings:
            values = item.get("values") if isinstance(item, dict) else None
            if not isinstance(values, list):
                raise BadGateway(
                    f"The upstream provider '{self.name}' answered a malformed embedding."
                )
            vectors.append(values)
        metadata = answer.get("usageMetadata")
        tokens = (
            count(metadata.get("promptTokenCount"))
            if isinstance(metadata, dict)
            else sum(estimate_tokens(len(t)) for t in texts)
        )
        return EmbeddingResult(
            [
                {"object": "embedding", "index": i, "embedding": encode_embedding(v, request)}
                for i, v in enumerate(vectors)
            ],
            tokens,
        )

    def parse_response(self, call: ChatCall, body: bytes) -> Completion:
        try:
            response = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadGateway(
                f"The upstream provider '{self.name}' answered with invalid JSON."
            ) from exc
        try:
            return translate_response(call, response)
        except BadGateway as exc:
            raise BadGateway(f"The upstream provider '{self.name}': {exc.message}") from exc

    def map_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> GatewayError:
        parsed: Any = None
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
        rpc_status = error_message(parsed, "error", "status") or ""
        message = error_message(parsed, "error", "message")
        if message is not None:
            message = self.redact(message)[:1000]
        retry_after = retry_after_from(headers)
        if retry_after is None:
            retry_after = retry_delay(parsed)
        if _is_key_problem(parsed):
            rpc_status = "UNAUTHENTICATED"
        mapped = error_for(self.name, rpc_status, message, retry_after)
        return mapped or status_error(self.name, status, message, retry_after)

    def map_stream_error(self, kind: str, message: str) -> GatewayError:
        """`data: {"error": …}` mid-stream; kind is its status name (or numeric code)."""
        mapped = error_for(self.name, kind, self.redact(message)[:500], None)
        if mapped is None or isinstance(mapped, InvalidRequest):
            return super().map_stream_error(kind, message)
        return mapped
