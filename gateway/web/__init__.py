"""Mission Control: server-rendered pages under /mission-control (Jinja2 templates, hand-written
CSS and JS served by the gateway itself; no third-party URL, no front-end build)."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from gateway.web import account_pages, auth_pages, operator, responses_page
from gateway.web.context import PREFIX, Web

STATIC_TYPES = {"app.css": "text/css; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in STATIC_TYPES:
        return Response("not found", status_code=404, media_type="text/plain")
    body = resources.files("gateway.web").joinpath("static", name).read_bytes()
    return Response(
        body, media_type=STATIC_TYPES[name], headers={"cache-control": "public, max-age=300"}
    )


def routes() -> list[BaseRoute]:
    web = Web()
    h = {
        **auth_pages.pages(web),
        **account_pages.pages(web),
        **operator.pages(web),
        **responses_page.pages(web),
    }

    def r(path: str, name: str, methods: list[str]) -> Route:
        return Route(path, h[name], methods=methods)  # type: ignore[arg-type]

    return [
        Mount(
            PREFIX,
            routes=[
                r("/", "home", ["GET"]),
                r("/login", "login", ["GET", "POST"]),
                r("/signup", "signup", ["GET", "POST"]),
                r("/logout", "logout", ["POST"]),
                r("/operator/login", "operator_login", ["GET", "POST"]),
                r("/operator", "operator", ["GET"]),
                r("/dashboard", "dashboard", ["GET"]),
                r("/keys", "keys", ["GET"]),
                r("/keys", "create_key", ["POST"]),
                r("/keys/{key_id}/revoke", "revoke_key", ["POST"]),
                r("/keys/{key_id}/settings", "key_settings", ["POST"]),
                r("/webhook", "webhook", ["GET"]),
                r("/responses", "responses", ["GET"]),
                r("/webhook/{action}", "webhook_action", ["POST"]),
                Route("/static/{name}", static, methods=["GET"]),
            ],
        )
    ]
