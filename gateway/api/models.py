"""GET /v1/models and GET /v1/models/{provider}/{model}."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.api import messages
from gateway.api.common import app_state, authenticate, json_response
from gateway.errors import model_not_found


async def list_models(request: Request) -> Response:
    if "anthropic-version" in request.headers:  # an Anthropic SDK: its list shape
        return await messages.list_models_anthropic(request)
    await authenticate(request)
    catalog = app_state(request).catalog
    data = [entry.describe() for entry in catalog.entries.values()]
    data += [catalog.describe_route(name) for name in catalog.routes]
    return json_response({"object": "list", "data": data})


async def get_model(request: Request) -> Response:
    await authenticate(request)
    catalog = app_state(request).catalog
    model_id = request.path_params["model_id"]
    entry = catalog.get(model_id)
    if entry is not None:
        return json_response(entry.describe())
    if model_id in catalog.routes:
        return json_response(catalog.describe_route(model_id))
    raise model_not_found(model_id)
