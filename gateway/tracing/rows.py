"""The rows the request path sends for its ended spans, and what the exporter child makes of them.

A row holds the raw values the request already has (ids as bytes, times, the request's model,
provider, tokens, cost...), not the span's attribute dict: the child (exporter_child.SpanMaker)
builds the span's name, its GenAI attributes and its status from them with `server_span` and
`client_span` below, in the order the gateway's seams used to build them in process, so the
OTLP it sends is the same to the byte (tests/unit/test_span_pipe.py). Keeping the attribute
dict, the names and the provider-name lookups off the request path is about a third of what a
traced request cost the worker (docs/decisions/0019-cache-and-traces.md).

Every row starts with `HEAD` (plain msgpack values: the 128-bit trace id as 16 bytes and the
span ids as 8, big-endian, since msgpack integers stop at 64 bits), then the span kind's own
values: `SERVER` or `CLIENT`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# gen_ai.provider.name by provider kind: the conventions' well-known values where there is one.
PROVIDER_NAMES: Mapping[str, str] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "azure": "azure.ai.openai",
    "bedrock": "aws.bedrock",
    "vertex": "gcp.vertex_ai",
}

# The common head: the span kind (SpanKind's value), ids, the parent (None for a root; its
# span id, whether it is remote, its W3C flags), the trace state header, start and end (ns).
HEAD = (
    "kind",
    "trace_id",
    "span_id",
    "parent_id",
    "parent_remote",
    "parent_flags",
    "state",
    "start_ns",
    "end_ns",
)
# The server span's values: the request's RequestRecord fields, as they are at its end.
SERVER = (
    "method",
    "route",
    "status",
    "operation",
    "request_model",
    "model",
    "provider_kind",
    "provider",
    "account_id",
    "cache",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "finish_reasons",
)
# A client span's values: the request's operation, the attempt's deployment (its provider's
# kind, its upstream model name or None, the catalog model id, its configured provider name),
# the attempt's number and its error (a gateway error type or an exception's class), or None.
CLIENT = (
    "operation",
    "provider_kind",
    "upstream_model",
    "model_id",
    "deployment",
    "attempt",
    "error",
)
BODY = len(HEAD)  # where the kind's own values start


def provider_name(kind: str) -> str:
    return PROVIDER_NAMES.get(kind, kind)


def server_span(values: Sequence[Any]) -> tuple[str, dict[str, Any], str | None]:
    """The server span's name, attributes and error status description (None: unset)."""
    (method, route, status, operation, request_model, model, kind, provider, account_id,
     cache, prompt_tokens, completion_tokens, cost_usd, finish_reasons) = values  # fmt: skip
    attributes: dict[str, Any] = {"http.route": route, "http.response.status_code": status}
    if status >= 400:
        attributes["error.type"] = str(status)
    if operation is not None:
        attributes["gen_ai.operation.name"] = operation
    optional = {
        "gen_ai.request.model": request_model,
        "gen_ai.response.model": model,
        "gen_ai.provider.name": provider_name(kind) if kind is not None else None,
        "klawd.deployment": provider,
        "klawd.account_id": account_id,
        "klawd.cache": cache,
    }
    attributes.update({k: v for k, v in optional.items() if v is not None})
    if model is not None:
        attributes["gen_ai.usage.input_tokens"] = prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = completion_tokens
        attributes["klawd.cost_usd"] = cost_usd
    reasons = [str(r) for r in finish_reasons or () if r is not None]
    if reasons:
        attributes["gen_ai.response.finish_reasons"] = reasons
    return f"{method} {route}", attributes, f"HTTP {status}" if status >= 500 else None


def client_span(values: Sequence[Any]) -> tuple[str, dict[str, Any], str | None]:
    """A client span's name, attributes and error status description (None: unset)."""
    operation, kind, upstream_model, model_id, deployment, attempt, error = values
    operation = operation or "chat"
    upstream_model = upstream_model or model_id.split("/", 1)[-1]
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider_name(kind),
        "gen_ai.request.model": upstream_model,
        "klawd.deployment": deployment,
        "klawd.attempt": attempt,
    }
    if error is not None:
        attributes["error.type"] = error
    return f"{operation} {upstream_model}", attributes, error
