"""Builds ChatCalls for the pure translation functions (no sockets, no app)."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.providers.base import ChatCall
from gateway.routing.catalog import CatalogEntry
from gateway.schemas.openai import decode_chat_request
from gateway.settings import ModelSettings, ProviderSettings


def chat_call(kind: str, upstream: str, **fields: Any) -> ChatCall:
    body = orjson.dumps(
        {"model": f"p/{upstream}", "messages": [{"role": "user", "content": "hi"}]} | fields
    )
    target = CatalogEntry(
        ModelSettings(id=f"p/{upstream}", provider="p", upstream_model=upstream),
        ProviderSettings(kind=kind, base_url="http://upstream.invalid"),  # type: ignore[arg-type]
        None,
    )
    return ChatCall(decode_chat_request(body), body, target, "chatcmpl-test1", 1700000000)
