"""The cache key: account, route, resolved models and the request's meaning in canonical form.

Two requests mean the same when their JSON bodies are equal after:
- dropping what does not change the answer's content: `stream`, `stream_options` (how it is
  delivered), `user` (who asked; the account is in the key anyway) and `model` (the resolved
  catalog models are in the key instead, so an alias and the model it resolves to differ only
  when their targets differ);
- dropping fields set to their documented default (`temperature: 1`, `top_p: 1`, `n: 1`, …);
- writing numbers one way (`0.0` and `0` are equal) and objects with sorted keys (field order and
  whitespace never reach the key: the body is parsed, not hashed as sent).

The key is a SHA-256 over those parts, so the store never holds prompt text in a key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

# Fields that never change an answer's content, per route.
IGNORED: Mapping[str, frozenset[str]] = {
    "chat": frozenset({"model", "stream", "stream_options", "user"}),
    # Anthropic's `metadata` holds only `user_id` (Anthropic's `user`).
    "messages": frozenset({"model", "stream", "metadata"}),
    # `store` is false whenever the cache is used (stored responses are never cached); the
    # answer echoes `metadata`, so it stays in the key.
    "responses": frozenset({"model", "stream", "stream_options", "user", "store"}),
    "embeddings": frozenset({"model", "user"}),
}
# Fields equal to these documented defaults are the same as absent.
DEFAULTS: Mapping[str, Mapping[str, object]] = {
    "chat": {
        "temperature": 1,
        "top_p": 1,
        "n": 1,
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "logprobs": False,
        "parallel_tool_calls": True,
    },
    "messages": {"temperature": 1},
    "responses": {"temperature": 1, "top_p": 1, "parallel_tool_calls": True},
    "embeddings": {"encoding_format": "float"},
}


def canonical(value: Any) -> Any:
    """Numbers written one way (an integral float is an int), recursively."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def request_meaning(route: str, body: Mapping[str, Any]) -> bytes:
    """The canonical JSON of what a request asks (see the module docstring)."""
    ignored = IGNORED[route]
    defaults = DEFAULTS[route]
    kept: dict[str, Any] = {}
    for name, value in body.items():
        if name in ignored or value is None:
            continue
        value = canonical(value)
        if name in defaults and defaults[name] == value:
            continue
        kept[name] = value
    return orjson.dumps(kept, option=orjson.OPT_SORT_KEYS)


def cache_key(account_id: str, route: str, models: Iterable[str], meaning: bytes) -> str:
    """`<account id>:<sha256>`: the account stays readable in the key (Redis hash tag, purges
    by account); the rest is a digest of the route, the resolved models and the meaning."""
    digest = hashlib.sha256()
    for part in (route, "\0".join(models)):
        digest.update(part.encode())
        digest.update(b"\0\0")
    digest.update(meaning)
    return f"{account_id}:{digest.hexdigest()}"


def repeatable(route: str, body: Mapping[str, Any]) -> bool:
    """Whether asking again should give the same answer: not when sampling (temperature > 0,
    every route's default is 1) without a seed, nor when several choices are asked for (n > 1:
    they are meant to differ). Embeddings are deterministic."""
    if route == "embeddings":
        return True
    n = body.get("n")
    if isinstance(n, int | float) and n > 1:
        return False
    temperature = body.get("temperature")
    if temperature is None:
        temperature = 1
    if not isinstance(temperature, int | float) or temperature <= 0:
        return True
    return route == "chat" and body.get("seed") is not None
