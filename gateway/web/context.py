"""What every Mission Control page shares: templates, the signed session, CSRF-checked forms."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from gateway.api.common import app_state
from gateway.billing import micros_to_usd
from gateway.limits import Limiter, LimitSpec
from gateway.store.base import Account
from gateway.web import sessions
from gateway.web.sessions import Session

if TYPE_CHECKING:
    from jinja2 import Environment

PREFIX = "/mission-control"
# attempts allowed (see Web.throttled): sign-ins per e-mail address; sign-ups and operator
# sign-ins per client address (generous: behind a load balancer many people share one)
PER_ADDRESS = LimitSpec(requests_per_minute=10, requests_per_day=200)
PER_CLIENT = LimitSpec(requests_per_minute=30, requests_per_day=2000)
MAX_FORM_BYTES = 64 * 1024

Handler = Callable[[Request], Awaitable[Response]]


def usd(micros: int) -> str:
    """Whole cents as $1,234.50; anything finer down to the micro-dollar ($4.99997)."""
    if micros % 10_000 == 0:
        return f"${micros_to_usd(micros):,.2f}"
    whole, fraction = f"{micros / 1e6:,.6f}".split(".")
    return f"${whole}.{fraction.rstrip('0').ljust(2, '0')}"


def utc(unix: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(unix)) if unix else ""


class Form:
    def __init__(self, fields: dict[str, list[str]]) -> None:
        self._fields = fields

    def get(self, name: str, default: str = "") -> str:
        values = self._fields.get(name)
        return values[0].strip() if values else default

    def all(self, name: str) -> list[str]:
        return self._fields.get(name, [])


class Web:
    """Built once per app (gateway.web.routes); holds the Jinja environment."""

    def __init__(self) -> None:
        self._env: Environment | None = None
        self._key: str | None = None
        self._limiter: Limiter | None = None

    @property
    def env(self) -> Environment:
        """Made at the first page: a worker that serves only the API never loads Jinja (its
        templates compile at their first render either way)."""
        if self._env is None:
            from jinja2 import Environment, PackageLoader, select_autoescape

            env = Environment(
                loader=PackageLoader("gateway.web", "templates"),
                autoescape=select_autoescape(default=True),
                trim_blocks=True,
                lstrip_blocks=True,
            )
            env.filters["usd"] = usd
            env.filters["utc"] = utc
            env.globals["prefix"] = PREFIX
            self._env = env
        return self._env

    async def key(self, request: Request) -> str:
        """The session signing key every replica shares (made once, kept in the store; it never
        changes, so each app reads it once)."""
        if self._key is None:
            self._key = await app_state(request).store.shared_secret(
                sessions.SECRET_NAME, secrets.token_hex(32)
            )
        return self._key

    async def throttled(self, request: Request, kind: str, subject: str) -> float | None:
        """Seconds to wait when `subject` made too many `kind` attempts (sign-in by address,
        sign-up and operator sign-in by client address), else None. The gateway's own limiter:
        exact across replicas with Redis."""
        if self._limiter is None:
            self._limiter = app_state(request).store.limiter()
        digest = hashlib.sha256(f"{kind}:{subject}".encode()).hexdigest()[:32]
        spec = PER_ADDRESS if kind == "login" else PER_CLIENT
        decision = await self._limiter.admit(f"mc_{digest}", spec, 0)
        return None if decision.admitted else max(1.0, decision.retry_after_s)

    async def session(self, request: Request) -> Session | None:
        key = await self.key(request)
        return sessions.decode_session(
            request.cookies.get(sessions.SESSION_COOKIE), key, time.time()
        )

    async def form(self, request: Request, nonce: str | None) -> Form | None:
        """The urlencoded form, or None when its CSRF token is not the one issued for `nonce`."""
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            return None
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        form = Form(fields)
        if not sessions.csrf_ok(await self.key(request), nonce, form.get("csrf")):
            return None
        return form

    async def render(
        self,
        request: Request,
        template: str,
        context: dict[str, Any],
        session: Session | None = None,
        status: int = 200,
    ) -> HTMLResponse:
        """Renders with the CSRF token of the session, or of a fresh anonymous nonce cookie."""
        key = await self.key(request)
        anon_nonce = None
        if session is not None:
            token = sessions.csrf_token(key, session.nonce)
        else:
            anon_nonce = request.cookies.get(sessions.CSRF_COOKIE) or secrets.token_hex(16)
            token = sessions.csrf_token(key, anon_nonce)
        settings = app_state(request).settings
        html = self.env.get_template(template).render(
            csrf=token,
            session=session,
            signup_enabled=settings.mission_control.signup,
            **context,
        )
        response = HTMLResponse(html, status_code=status)
        response.headers["cache-control"] = "no-store"
        response.headers["x-frame-options"] = "DENY"
        response.headers["content-security-policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'"
        )
        if anon_nonce is not None:
            set_cookie(request, response, sessions.CSRF_COOKIE, anon_nonce, max_age=3600)
        return response

    async def account_session(self, request: Request) -> tuple[Session, Account] | Response:
        """The signed-in account holder, or a redirect to the sign-in page."""
        session = await self.session(request)
        if session is None or session.operator:
            return RedirectResponse(f"{PREFIX}/login", status_code=303)
        account = await app_state(request).store.get_account(session.account_id)
        if account is None:
            return RedirectResponse(f"{PREFIX}/login", status_code=303)
        return session, account

    def too_many(self, wait_s: float) -> Response:
        return HTMLResponse(
            "<!doctype html><title>Too many attempts</title><p>Too many attempts; try again in "
            f"{int(wait_s) + 1} seconds.</p>",
            status_code=429,
            headers={"retry-after": str(int(wait_s) + 1)},
        )

    def forbidden(self) -> Response:
        return HTMLResponse(
            "<!doctype html><title>Forbidden</title><p>The form expired or did not come from "
            "this site. Go back, reload the page and try again.</p>",
            status_code=403,
        )


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=PREFIX,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https"
        or app_state(request).settings.mission_control.secure_cookies,
    )


def redirect(path: str) -> Response:
    return RedirectResponse(f"{PREFIX}{path}", status_code=303)
