"""POST /api/images/generations (alias /v1/images/generations), OpenAI Images-shaped.

auth → decode → resolve model → plan check → provider → respond. Image generation is not
idempotent: a target is retried only after a connect error (the request provably never reached
the upstream), never after a timeout or an answer; then the model's fallbacks are tried.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.common import app_state, authenticate, json_response
from gateway.auth import AuthContext
from gateway.billing import format_usd, usd_to_micros
from gateway.errors import AuthenticationError, GatewayError, PermissionDenied, ServiceUnavailable
from gateway.providers.base import ImageCall, ImageProvider, ImageResult, UpstreamUnreachable
from gateway.routing.catalog import CatalogEntry
from gateway.routing.router import resolve_image
from gateway.schemas.images import ImageRequest, decode_image_request
from gateway.state import AppState

log = logging.getLogger("klawd")


async def image_generations(request: Request) -> Response:
    state = app_state(request)
    auth = await authenticate(request)
    body = await request.body()
    images = decode_image_request(body)
    targets = resolve_image(state.catalog, images.model)
    await require_image_plan(state, auth)
    created = int(time.time())
    result, target = await _generate(state, images, body, targets, created)
    cost = len(result.images) * usd_to_micros(target.model.usd_per_image)
    return json_response(
        {"created": created, "data": msgspec.to_builtins(result.images)},
        headers={
            "x-klawd-model": target.model.id,
            "x-klawd-provider": target.model.provider,
            "x-klawd-cost-usd": format_usd(cost),
        },
    )


async def require_image_plan(state: AppState, auth: AuthContext) -> None:
    account = await state.store.get_account(auth.account_id)
    if account is None:
        raise AuthenticationError("The API key's account no longer exists.")
    plan = state.settings.plans.get(account.plan)
    if plan is None or not plan.images:
        raise PermissionDenied(
            f"Image generation is not included in the '{account.plan}' plan; "
            "it needs the pro or enterprise plan."
        )


async def _generate(
    state: AppState,
    images: ImageRequest,
    body: bytes,
    targets: list[CatalogEntry],
    created: int,
) -> tuple[ImageResult, CatalogEntry]:
    last_error: GatewayError | None = None
    for target in targets:
        provider = state.providers[target.model.provider]
        if not isinstance(provider, ImageProvider):
            last_error = ServiceUnavailable(
                f"The provider '{target.model.provider}' cannot generate images."
            )
            continue
        retry = state.settings.provider_retry(target.model.provider)
        call = ImageCall(images, body, target, created)
        for attempt in range(retry.attempts):
            try:
                return await provider.generate_images(call), target
            except UpstreamUnreachable as exc:
                log.info("image target %s unreachable (attempt %d)", target.model.id, attempt + 1)
                last_error = exc
                if attempt + 1 < retry.attempts:
                    cap = min(retry.max_delay_s, retry.base_delay_s * 2**attempt)
                    await asyncio.sleep(random.uniform(0, cap))  # noqa: S311 (jitter)
    raise last_error or ServiceUnavailable("No target could generate the images.")
