"""API keys: format, hashing, and the short-lived in-process lookup cache.

A key is `sk-klawd-` + 43 url-safe characters (32 random bytes). Only its SHA-256 is stored, with a
short display prefix. Lookups (with the key's policy) are cached for `ttl_s` seconds; revoking or
changing a key through this process drops the cached entry at once (and, in cluster mode, a
pub/sub message does the same on every replica).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

from msgspec import Struct

from gateway.errors import AuthenticationError
from gateway.store.base import NO_POLICY, ApiKey, KeyPolicy, Store

KEY_PREFIX = "sk-klawd-"
KEY_RANDOM_BYTES = 32
DISPLAY_PREFIX_CHARS = len(KEY_PREFIX) + 4


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    return key[:DISPLAY_PREFIX_CHARS]


def secrets_equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


# gc=False: atoms and a frozen KeyPolicy, never in a reference cycle: the cycle collector need
# not walk it (docs/decisions/0012, twenty-sixth pass).
class AuthContext(Struct, frozen=True, gc=False):
    key_id: str
    account_id: str
    expires_at: int | None
    policy: KeyPolicy = NO_POLICY  # budgets, limits, allowed models (gateway/keys.py)


_INVALID = "Invalid API key. Check the Authorization: Bearer header."


class KeyCache:
    """SHA-256(key) -> AuthContext, with a TTL; unknown keys are cached too (negative entries)."""

    def __init__(
        self,
        store: Store,
        ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 100_000,
    ) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, tuple[float, AuthContext | None]] = {}
        self._hash_by_key_id: dict[str, str] = {}
        self._max_entries = max_entries

    async def authenticate(self, authorization: str | None, now_unix: float) -> AuthContext:
        token = bearer_token(authorization)
        if token is None:
            raise AuthenticationError(
                "Missing API key: send it as `Authorization: Bearer sk-klawd-…`."
            )
        if not token.startswith(KEY_PREFIX):
            raise AuthenticationError(_INVALID)
        key_hash = hash_key(token)
        cached = self._entries.get(key_hash)
        if cached is not None and cached[0] > self._clock():
            context = cached[1]
        else:
            context = _context(await self._store.key_by_hash(key_hash))
            self._remember(key_hash, context)
        if context is None:
            raise AuthenticationError(_INVALID)
        if context.expires_at is not None and context.expires_at <= now_unix:
            raise AuthenticationError("This API key has expired.")
        return context

    def clear(self) -> None:
        self._entries.clear()
        self._hash_by_key_id.clear()

    def invalidate(self, key_id: str) -> None:
        key_hash = self._hash_by_key_id.pop(key_id, None)
        if key_hash is not None:
            self._entries.pop(key_hash, None)

    def _remember(self, key_hash: str, context: AuthContext | None) -> None:
        if len(self._entries) >= self._max_entries:
            # Full: expired entries go, then unknown keys (a flood of made-up keys fills the
            # cache with them; clearing it all made every real key a store lookup again), then
            # everything.
            now = self._clock()
            for stale in [h for h, (until, _) in self._entries.items() if until <= now]:
                del self._entries[stale]
            if len(self._entries) >= self._max_entries:
                for unknown in [h for h, (_, known) in self._entries.items() if known is None]:
                    del self._entries[unknown]
            if len(self._entries) >= self._max_entries:
                self._entries.clear()
                self._hash_by_key_id.clear()
        self._entries[key_hash] = (self._clock() + self._ttl_s, context)
        if context is not None:
            self._hash_by_key_id[context.key_id] = key_hash


def _context(key: ApiKey | None) -> AuthContext | None:
    if key is None or key.revoked_at is not None:
        return None
    return AuthContext(key.id, key.account_id, key.expires_at, key.policy)
