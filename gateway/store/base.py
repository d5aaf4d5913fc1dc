"""The Store protocol: accounts and API keys (usage, credits and webhooks grow here)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from msgspec import Struct

if TYPE_CHECKING:
    from gateway.limits import Limiter


class StoreError(Exception):
    """The store could not be reached or answered badly (mapped to 503 by the API)."""


class CustomLimits(Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """Per-account overrides of the plan's limits (enterprise accounts)."""

    requests_per_minute: int | None = None
    requests_per_day: int | None = None
    tokens_per_minute: int | None = None


class Account(Struct, frozen=True):
    id: str
    name: str
    plan: str
    credits_micros: int
    limits: CustomLimits
    created_at: int


class ApiKey(Struct, frozen=True):
    id: str
    account_id: str
    name: str
    prefix: str
    key_hash: str
    created_at: int
    expires_at: int | None
    revoked_at: int | None


class UsageEntry(Struct, frozen=True):
    """One request in the usage ledger. Settling it also moves the account's balance by
    `reserved_micros - cost_micros` (the reservation made at admission is released)."""

    id: str
    ts: float
    day: str  # UTC date, YYYY-MM-DD
    account_id: str
    key_id: str
    model: str
    provider: str
    prompt_tokens: int
    completion_tokens: int
    images: int
    cost_micros: int
    reserved_micros: int
    latency_ms: int
    status: int
    request_id: str
    stream: bool


class UsageRow(Struct, frozen=True):
    day: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    images: int
    cost_micros: int


class Store(Protocol):
    def limiter(self) -> Limiter:
        """The admission limiter that matches this store (embedded or Redis)."""
        ...

    def on_invalidate(self, handler: Callable[[str, str], None]) -> None:
        """Call handler(kind, id) when any process changes a key ("key"), an account
        ("account"), or when changes may have been missed ("all")."""
        ...

    async def ping(self) -> None: ...
    async def close(self) -> None: ...
    async def count_accounts(self) -> int: ...
    async def create_account(self, name: str, plan: str, credits_micros: int) -> Account: ...
    async def get_account(self, account_id: str) -> Account | None: ...
    async def update_account(
        self,
        account_id: str,
        *,
        plan: str | None = None,
        limits: CustomLimits | None = None,
        add_credits_micros: int = 0,
    ) -> Account | None: ...
    async def create_key(
        self, account_id: str, name: str, prefix: str, key_hash: str, expires_at: int | None
    ) -> ApiKey: ...
    async def key_by_hash(self, key_hash: str) -> ApiKey | None: ...
    async def revoke_key(self, key_id: str, now: int) -> ApiKey | None: ...
    async def reserve_credits(self, account_id: str, micros: int) -> bool:
        """Atomically take `micros` from the balance if it covers them; False otherwise."""
        ...

    async def release_credits(self, account_id: str, micros: int) -> None: ...
    async def settle(self, entries: list[UsageEntry]) -> None:
        """Record the entries and settle their reservations, each atomically."""
        ...

    async def usage(self, account_id: str, since_day: str, until_day: str) -> list[UsageRow]:
        """Totals by UTC day and model, both days inclusive."""
        ...


def open_store(url: str) -> Store:
    """Build the store named by `store.url` (no I/O until first use)."""
    if url.startswith("sqlite://"):
        from gateway.store.sqlite import SqliteStore

        return SqliteStore(sqlite_path(url))
    if url.startswith(("redis://", "rediss://", "redis+cluster://", "rediss+cluster://")):
        from gateway.store.redis import RedisStore

        return RedisStore(url)
    raise StoreError(f"store {url.split('://', 1)[0]}:// is not available in this build")


def sqlite_path(url: str) -> Path:
    """sqlite:///./data/klawd.db is relative to the working directory;
    sqlite:////abs/path.db is absolute."""
    rest = url.removeprefix("sqlite://")
    if rest.startswith("/"):
        rest = rest[1:]
    return Path(rest or "./data/klawd.db")
