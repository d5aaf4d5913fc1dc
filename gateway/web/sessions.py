"""Mission Control's security pieces: password hashing, signed session cookies, CSRF tokens.

- Passwords: scrypt (stdlib `hashlib.scrypt`, N=2^14, r=8, p=1: ~16 MiB and tens of ms per
  try), a random salt each, compared in constant time; hashed off the event loop.
- Sessions: a cookie `klawd_session` = base64url(JSON payload) + "." + hex HMAC-SHA256 with a
  signing key that every replica shares (`Store.shared_secret`), HttpOnly, SameSite=Lax, Secure
  on https, expiring after `mission_control.session_ttl_s`. The payload names the account (or
  the operator) and carries a random nonce.
- CSRF: every form carries a token = HMAC(key, "csrf:" + nonce). Signed-in forms use the
  session's nonce; the sign-in and sign-up forms use the nonce of a `klawd_csrf` cookie set with
  the form (a signed double submit). A POST without the right token is refused (403).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from typing import Annotated

import msgspec
from msgspec import Meta, Struct

SESSION_COOKIE = "klawd_session"
CSRF_COOKIE = "klawd_csrf"
SECRET_NAME = "mission_control_session_key"  # noqa: S105 (a name, not the secret)
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


class Session(Struct, frozen=True):
    account_id: str  # "" for the operator
    email: str
    operator: bool
    expires: Annotated[int, Meta(ge=0)]
    nonce: str


_session = msgspec.json.Decoder(Session)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )


async def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = await asyncio.to_thread(_hash, password, salt)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


async def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt" or (int(n), int(r), int(p)) != (SCRYPT_N, SCRYPT_R, SCRYPT_P):
            return False
        expected = _unb64(digest)
        given = await asyncio.to_thread(_hash, password, _unb64(salt))
    except ValueError:
        return False
    return hmac.compare_digest(given, expected)


def _mac(key: str, message: str) -> str:
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


def new_session(account_id: str, email: str, operator: bool, now: float, ttl_s: float) -> Session:
    return Session(account_id, email, operator, int(now + ttl_s), secrets.token_hex(16))


def encode_session(session: Session, key: str) -> str:
    payload = _b64(msgspec.json.encode(session))
    return f"{payload}.{_mac(key, 'session:' + payload)}"


def decode_session(cookie: str | None, key: str, now: float) -> Session | None:
    if not cookie or "." not in cookie:
        return None
    payload, _, mac = cookie.rpartition(".")
    if not hmac.compare_digest(mac, _mac(key, "session:" + payload)):
        return None
    try:
        session = _session.decode(_unb64(payload))
    except (ValueError, msgspec.DecodeError):
        return None
    return session if session.expires > now else None


def csrf_token(key: str, nonce: str) -> str:
    return _mac(key, "csrf:" + nonce)


def csrf_ok(key: str, nonce: str | None, token: str | None) -> bool:
    if not nonce or not token:
        return False
    return hmac.compare_digest(csrf_token(key, nonce), token)


# Checked against when the e-mail address is unknown, so that a wrong address costs the same
# scrypt work as a wrong password (no timing difference tells which addresses exist).
DUMMY_HASH = f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(bytes(16))}${_b64(bytes(32))}"
