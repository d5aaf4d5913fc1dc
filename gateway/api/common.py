"""Small helpers shared by the handlers: state access, JSON responses, body decoding, auth."""

from __future__ import annotations

import time
from typing import Any, TypeVar

import msgspec
import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import AuthContext, bearer_token, secrets_equal
from gateway.errors import AuthenticationError, PermissionDenied
from gateway.schemas.decoding import decode_json
from gateway.state import AppState

T = TypeVar("T")


def app_state(request: Request) -> AppState:
    state: AppState = request.state.klawd
    return state


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def decode_body(body: bytes, kind: type[T]) -> T:
    """Admin and web bodies: an empty body is an empty object."""
    decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(kind)
    return decode_json(decoder, body or b"{}")


async def authenticate(request: Request) -> AuthContext:
    state = app_state(request)
    return await state.keys.authenticate(request.headers.get("authorization"), time.time())


def require_admin(request: Request) -> None:
    state = app_state(request)
    token = bearer_token(request.headers.get("authorization"))
    if state.admin_token is None:
        raise PermissionDenied(
            "The admin API is disabled: the operator has not set "
            f"{state.settings.server.admin_token_env}."
        )
    if token is None or not secrets_equal(token, state.admin_token.reveal()):
        raise AuthenticationError("Invalid admin token.")
