"""POST /api/images/generations (alias /v1/images/generations), OpenAI Images-shaped.

auth → decode → resolve model → plan check → admit → provider → respond. Image generation is not
idempotent: a target is retried only after a connect error (the request provably never reached
the upstream), never after a timeout or an answer; then the model's fallbacks are tried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.common import app_state, authenticate, json_response
from gateway.auth import AuthContext
from gateway.billing import TokenUsage, format_usd, usd_to_micros
from gateway.errors import PermissionDenied, ServiceUnavailable
from gateway.pending_admission import admitted_call
from gateway.providers.base import ImageCall, ImageResult
from gateway.routing.catalog import CatalogEntry
from gateway.routing.retry import never_sent
from gateway.routing.router import resolve_image
from gateway.schemas.images import ImageRequest, decode_image_request
from gateway.state import AppState

log = logging.getLogger("klawd")

GenerateCall = Callable[[ImageCall], Awaitable[ImageResult]]


async def image_generations(request: Request) -> Response:
    state = app_state(request)
    auth = await authenticate(request)
    body = await request.body()
    images = decode_image_request(body)
    targets = resolve_image(state.catalog, images.model, images.n)
    await require_image_plan(state, auth)
    # Sent; on Redis the upstream call waits for its reply at the gate, inside the retry loop
    # and so under `[retry] deadline_s` as the other routes' (gateway/admission_gate.py).
    pending = await state.meter.start(
        auth,
        request.state.request_id,
        images.model,
        targets,
        lambda allowed: (
            max(usd_to_micros(t.model.usd_per_image) for t in allowed) * (images.n or 1)
        ),
    )
    created = int(time.time())
    # Retried and fallen back only after a connect error (`never_sent`), under the admission
    result, target, ticket = await admitted_call(
        pending,
        state.retrier,
        _generate_attempt(state, images, body, created),
        False,
        0,
        never_sent,
        never_sent,
    )
    limit_headers = ticket.admission.headers()
    cost = state.meter.settle(ticket, target, TokenUsage(0, 0), len(result.images), 200, False)
    return json_response(
        {"created": created, "data": msgspec.to_builtins(result.images)},
        headers={
            "x-klawd-model": target.model.id,
            "x-klawd-provider": target.model.provider,
            "x-klawd-cost-usd": format_usd(cost),
        }
        | limit_headers,
    )


async def require_image_plan(state: AppState, auth: AuthContext) -> None:
    """The account as the admission reads it (the account cache, dropped at once when any
    replica changes it): no store round trip of its own before the request's retry loop, where
    `[retry] deadline_s` would not bound it."""
    account = await state.meter.account(auth)
    plan = state.settings.plans.get(account.plan)
    if plan is None or not plan.images:
        raise PermissionDenied(
            f"Image generation is not included in the '{account.plan}' plan; "
            "it needs the pro or enterprise plan."
        )


def _generate_attempt(
    state: AppState, images: ImageRequest, body: bytes, created: int
) -> Callable[[CatalogEntry], Awaitable[ImageResult]]:
    """Each try: the target's provider asked to generate."""

    async def attempt(target: CatalogEntry) -> ImageResult:
        # None if the provider has no `generate_images`: what `isinstance(p, ImageProvider)`
        # told, without the runtime Protocol's walk of its members (~110K instructions a try).
        generate: GenerateCall | None = getattr(
            state.providers[target.model.provider], "generate_images", None
        )
        if generate is None:
            raise ServiceUnavailable(
                f"The provider '{target.model.provider}' cannot generate images.",
                connect_failed=True,  # nothing was sent: the next target may be tried
            )
        return await generate(ImageCall(images, body, target, created))

    return attempt
