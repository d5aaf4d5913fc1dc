"""The account holder's stored Responses API answers (`/v1/responses` with `store: true`): the
most recent ones, newest first, with their model, status, tokens and the start of their text."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.common import app_state
from gateway.store.base import StoredResponse
from gateway.web.context import Web

LISTED = 50
PREVIEW_CHARS = 120


def _preview(output: list[dict[str, Any]]) -> str:
    """The answer's text, or the functions it called."""
    texts: list[str] = []
    for item in output:
        if item.get("type") == "message":
            texts += [str(p.get("text") or "") for p in item.get("content") or ()]
        elif item.get("type") == "function_call":
            texts.append(f"→ {item.get('name')}()")
    text = " ".join(t for t in texts if t)
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def row(stored: StoredResponse) -> dict[str, Any]:
    response = stored.response
    usage = response.get("usage") or {}
    return {
        "id": stored.id,
        "created_at": stored.created_at,
        "expires_at": stored.expires_at,
        "model": response.get("model"),
        "status": response.get("status"),
        "input_tokens": usage.get("input_tokens", 0),
        "output_tokens": usage.get("output_tokens", 0),
        "previous": response.get("previous_response_id"),
        "preview": _preview(response.get("output") or []),
    }


def pages(web: Web) -> dict[str, object]:
    async def responses(request: Request) -> Response:
        found = await web.account_session(request)
        if isinstance(found, Response):
            return found
        session, account = found
        stored = await app_state(request).store.list_responses(account.id, LISTED, int(time.time()))
        return await web.render(
            request,
            "responses.html",
            {"account": account, "responses": [row(s) for s in stored], "listed": LISTED},
            session,
        )

    return {"responses": responses}
