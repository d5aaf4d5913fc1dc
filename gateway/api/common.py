"""Small helpers shared by the handlers: state access, JSON responses, body decoding, auth."""

from __future__ import annotations

import time
from typing import Any, TypeVar

import msgspec
import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import AuthContext, bearer_token, secrets_equal
from gateway.errors import AuthenticationError, InvalidRequest, PermissionDenied
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
    try:
        return msgspec.json.decode(body or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        text = str(exc)
        message, _, location = text.partition(" - at `$")
        param = location.rstrip("`").lstrip(".") or None
        if message.startswith("Object missing required field `"):
            param = message.split("`")[1]
        raise InvalidRequest(message, param=param) from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidRequest("The request body is not valid UTF-8.") from exc
    except RecursionError as exc:
        raise InvalidRequest("The request body is nested too deeply.") from exc


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
