"""Sign up, sign in (account holders and the operator), sign out."""

from __future__ import annotations

import hmac
import time

from starlette.requests import Request
from starlette.responses import Response

from gateway import accounts
from gateway.api.common import app_state
from gateway.store.base import User
from gateway.web import sessions
from gateway.web.context import Web, redirect, set_cookie

MIN_PASSWORD = 10


def _valid_email(email: str) -> bool:
    name, _, domain = email.partition("@")
    return bool(name) and "." in domain and len(email) <= 200 and " " not in email


def _client(request: Request) -> str:
    return request.client.host if request.client else "-"


async def _signed_in(request: Request, session: sessions.Session, web: Web, to: str) -> Response:
    response = redirect(to)
    ttl = app_state(request).settings.mission_control.session_ttl_s
    cookie = sessions.encode_session(session, await web.key(request))
    set_cookie(request, response, sessions.SESSION_COOKIE, cookie, max_age=int(ttl))
    return response


def pages(web: Web) -> dict[str, object]:
    async def home(request: Request) -> Response:
        session = await web.session(request)
        if session is None:
            return redirect("/login")
        return redirect("/operator" if session.operator else "/dashboard")

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return await web.render(request, "login.html", {"error": None})
        form = await web.form(request, request.cookies.get(sessions.CSRF_COOKIE))
        if form is None:
            return web.forbidden()
        state = app_state(request)
        email = form.get("email").lower()
        wait = await web.throttled(request, "login", email)
        if wait is not None:
            return web.too_many(wait)
        user = await state.store.get_user(email)
        # the same work and the same answer whether or not the address exists
        stored = user.password_hash if user else sessions.DUMMY_HASH
        valid = await sessions.check_password(form.get("password"), stored)
        if user is None or not valid:
            return await web.render(
                request, "login.html", {"error": "Wrong e-mail address or password."}, status=401
            )
        ttl = state.settings.mission_control.session_ttl_s
        session = sessions.new_session(user.account_id, email, False, time.time(), ttl)
        return await _signed_in(request, session, web, "/dashboard")

    async def signup(request: Request) -> Response:
        state = app_state(request)
        if not state.settings.mission_control.signup:
            return await web.render(
                request,
                "login.html",
                {"error": "Sign-up is disabled on this gateway; ask its operator for an account."},
                status=403,
            )
        if request.method == "GET":
            return await web.render(request, "signup.html", {"error": None})
        form = await web.form(request, request.cookies.get(sessions.CSRF_COOKIE))
        if form is None:
            return web.forbidden()
        wait = await web.throttled(request, "signup", _client(request))
        if wait is not None:
            return web.too_many(wait)
        name, email, password = form.get("name"), form.get("email").lower(), form.get("password")
        error = None
        if not name or len(name) > 200:
            error = "Give your account a name (at most 200 characters)."
        elif not _valid_email(email):
            error = "That does not look like an e-mail address."
        elif len(password) < MIN_PASSWORD:
            error = f"Choose a password of at least {MIN_PASSWORD} characters."
        elif await state.store.get_user(email) is not None:
            error = "An account with this e-mail address exists; sign in instead."
        if error:
            return await web.render(
                request, "signup.html", {"error": error, "name": name, "email": email}, status=400
            )
        account = await accounts.create_account(
            state.store, state.settings, accounts.NewAccount(name=name, plan="free")
        )
        user = User(email, account.id, await sessions.hash_password(password), int(time.time()))
        if not await state.store.create_user(user):  # lost a race for the address
            return await web.render(
                request,
                "signup.html",
                {"error": "An account with this e-mail address exists; sign in instead."},
                status=400,
            )
        ttl = state.settings.mission_control.session_ttl_s
        session = sessions.new_session(account.id, email, False, time.time(), ttl)
        return await _signed_in(request, session, web, "/dashboard")

    async def operator_login(request: Request) -> Response:
        if request.method == "GET":
            return await web.render(request, "operator_login.html", {"error": None})
        form = await web.form(request, request.cookies.get(sessions.CSRF_COOKIE))
        if form is None:
            return web.forbidden()
        wait = await web.throttled(request, "operator", _client(request))
        if wait is not None:
            return web.too_many(wait)
        state = app_state(request)
        token = form.get("token")
        expected = state.admin_token.reveal() if state.admin_token else None
        if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
            return await web.render(
                request, "operator_login.html", {"error": "Wrong admin token."}, status=401
            )
        ttl = min(state.settings.mission_control.session_ttl_s, 12 * 3600)
        session = sessions.new_session("", "operator", True, time.time(), ttl)
        return await _signed_in(request, session, web, "/operator")

    async def logout(request: Request) -> Response:
        session = await web.session(request)
        form = await web.form(request, session.nonce if session else None)
        if form is None:
            return web.forbidden()
        response = redirect("/login")
        response.delete_cookie(sessions.SESSION_COOKIE, path="/mission-control")
        return response

    return {
        "home": home,
        "login": login,
        "signup": signup,
        "operator_login": operator_login,
        "logout": logout,
    }
