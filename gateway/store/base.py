"""The Store protocol: accounts, API keys, usage and credits, webhooks, invoices, users, and the
Responses API's stored responses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from msgspec import Struct

if TYPE_CHECKING:
    from gateway.limits import Limiter


class StoreError(Exception):
    """The store could not be reached or answered badly (mapped to 503 by the API)."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        # Headers that belong on the client's 503 too: an admitted request's rate headers,
        # added where it is settled (gateway/metering.py's SettleOnFailure), as on a
        # GatewayError's `extra_headers`.
        self.extra_headers: dict[str, str] = {}


# gc=False (here and on Account and the key's Structs below): frozen, atoms, tuples of str and
# str dicts, never in a reference cycle: the cycle collector need not walk them (decision 0012).
class CustomLimits(Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True, gc=False):
    """Per-account overrides of the plan's limits (enterprise accounts)."""

    requests_per_minute: int | None = None
    requests_per_day: int | None = None
    tokens_per_minute: int | None = None


class Account(Struct, frozen=True, gc=False):
    id: str
    name: str
    plan: str
    credits_micros: int
    limits: CustomLimits
    created_at: int


class CreditGrant(Struct, frozen=True):
    """An account's credit since its last grant (its creation's starting credit, or credits
    added later): the balance it then showed, the cost settled since, and the grant's number
    (1 at creation, +1 per top-up), which names the period of the `budget.threshold` events of
    the account's credit (gateway/webhooks/credits.py)."""

    seq: int
    granted_micros: int
    granted_at: int  # unix seconds
    spent_micros: int


class KeyBudget(Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True, gc=False):
    """A key's spending caps in integer micro-dollars per UTC day, UTC month and in total."""

    day_micros: int | None = None
    month_micros: int | None = None
    total_micros: int | None = None


class KeyLimits(Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True, gc=False):
    """A key's own request limits, applied on top of its account's plan (the tighter wins)."""

    requests_per_minute: int | None = None
    requests_per_day: int | None = None


class KeyPolicy(Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True, gc=False):
    """What one key may do: budgets, limits, allowed models (ids, globs, routes; empty: all)
    and free-form tags for spend reports (gateway/keys.py validates and applies them)."""

    budget: KeyBudget = KeyBudget()
    limits: KeyLimits = KeyLimits()
    models: tuple[str, ...] = ()
    tags: dict[str, str] = {}


NO_POLICY = KeyPolicy()


class ApiKey(Struct, frozen=True):
    id: str
    account_id: str
    name: str
    prefix: str
    key_hash: str
    created_at: int
    expires_at: int | None
    revoked_at: int | None
    policy: KeyPolicy = NO_POLICY


class KeySpend(Struct, frozen=True):
    """A key's settled spend in micro-dollars: this UTC day, this UTC month, ever."""

    today: int = 0
    month: int = 0
    total: int = 0


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
    # What admission reserved against the API key's budgets (0 for a key without a budget);
    # settling releases it from the key's spend periods of `day`. Not a ledger column.
    key_reserved_micros: int = 0
    # Redis: the hold that admission recorded for the reservation ('' for none), removed by
    # settling (gateway/store/lua/klawd.lua, klawd_admit_v3). Not a ledger column.
    hold_id: str = ""


class UsageRow(Struct, frozen=True):
    day: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    images: int
    cost_micros: int


class KeyUsageRow(Struct, frozen=True):
    day: str
    key_id: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    images: int
    cost_micros: int


class Webhook(Struct, frozen=True):
    """An account's webhook endpoint. `previous_secret` still signs (as
    X-Klawd-Signature-Previous) until `previous_expires_at` after a rotation."""

    account_id: str
    url: str
    events: tuple[str, ...]
    secret: str
    previous_secret: str | None
    previous_expires_at: int | None
    updated_at: int


class DeliveryAttempt(Struct, frozen=True):
    at: float
    status_code: int | None  # None: no HTTP answer (refused, timeout, blocked address)
    error: str | None
    duration_ms: int
    response_prefix: str  # the first bytes of the receiver's answer, nothing more


class Delivery(Struct, frozen=True):
    """One event for one account's webhook, with every attempt made so far. `body` is the exact
    JSON that is signed and sent (the same bytes on every retry)."""

    id: str  # the event id, evt_...
    account_id: str
    type: str
    body: str
    created_at: float
    status: str  # pending | delivered | failed
    next_attempt_at: float
    attempts: tuple[DeliveryAttempt, ...] = ()


class Invoice(Struct, frozen=True):
    id: str
    account_id: str
    amount_micros: int
    description: str
    status: str  # open | paid
    created_at: int
    paid_at: int | None


class User(Struct, frozen=True):
    """A Mission Control sign-in: one e-mail address, one account."""

    email: str
    account_id: str
    password_hash: str
    created_at: int


class StoredResponse(Struct, frozen=True):
    """A Responses API answer kept for `GET /v1/responses/{id}` and `previous_response_id`:
    the Response object as answered, this turn's input items, and the conversation before this
    turn (items), so that the next turn rebuilds the whole conversation from one read."""

    id: str
    account_id: str
    created_at: int
    expires_at: int
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    history: list[dict[str, Any]]


# Deliveries kept per account (older ones are dropped when a new one is added).
DELIVERIES_KEPT = 200


class Store(Protocol):
    # How long the usage recorder lets ledger entries gather before it settles them as one
    # batch (gateway/usage.py): the store's per-batch cost against how late usage shows.
    settle_interval_s: float

    def limiter(self) -> Limiter:
        """The admission limiter that matches this store (embedded or Redis)."""
        ...

    def on_invalidate(self, handler: Callable[[str, str], None]) -> None:
        """Call handler(kind, id) when any process changes a key ("key"), an account
        ("account"), or when changes may have been missed ("all")."""
        ...

    async def ping(self) -> None: ...
    async def close(self) -> None: ...
    async def cache_get(self, key: str) -> bytes | None:
        """The response cache's entry under `key` (gateway/cache/), None when there is none."""
        ...

    async def cache_put(self, key: str, value: bytes, ttl_s: float) -> None:
        """Store (or replace) a response cache entry; the store may drop it after `ttl_s`.
        `key` is `<account id>:<digest>`."""
        ...

    async def count_accounts(self) -> int: ...
    async def create_account(self, name: str, plan: str, credits_micros: int) -> Account:
        """The starting credit is the account's first grant."""
        ...

    async def get_account(self, account_id: str) -> Account | None: ...
    async def update_account(
        self,
        account_id: str,
        *,
        plan: str | None = None,
        limits: CustomLimits | None = None,
        add_credits_micros: int = 0,
    ) -> Account | None:
        """Credits added (> 0) are a new grant: the account's balance right after them (as the
        returned account shows it) becomes the grant, counted from zero spent."""
        ...

    async def create_key(
        self,
        account_id: str,
        name: str,
        prefix: str,
        key_hash: str,
        expires_at: int | None,
        policy: KeyPolicy = NO_POLICY,
    ) -> ApiKey: ...
    async def key_by_hash(self, key_hash: str) -> ApiKey | None: ...
    async def get_key(self, key_id: str) -> ApiKey | None: ...
    async def update_key(self, key_id: str, policy: KeyPolicy) -> ApiKey | None:
        """Replace the key's policy; every process's cached copy of the key is dropped."""
        ...

    async def revoke_key(self, key_id: str, now: int) -> ApiKey | None: ...
    async def key_spend(self, account_id: str, key_ids: list[str], day: str) -> dict[str, KeySpend]:
        """Settled spend of each key on `day` (YYYY-MM-DD), in its month and in total."""
        ...

    async def reserve_credits(self, account_id: str, micros: int) -> bool:
        """Atomically take `micros` from the balance if it covers them; False otherwise."""
        ...

    async def release_credits(self, account_id: str, micros: int) -> None: ...
    async def settle(
        self, entries: list[UsageEntry], resent: bool = False
    ) -> dict[str, CreditGrant]:
        """Record the entries and settle their reservations, each atomically; each entry's cost
        also counts against its account's current grant. Returns the grant of each account whose
        entries settled now, as it stands after them (accounts with no recorded grant, made
        before grants were, and entries settled before are left out). `resent`: the batch is
        sent again after a failure whose call may have settled it (its reply lost): every
        account of the batch with a recorded grant is returned, settled now or before, so the
        grant the lost reply carried is not missed (issue 19zzzzzl)."""
        ...

    async def usage(self, account_id: str, since_day: str, until_day: str) -> list[UsageRow]:
        """Totals by UTC day and model, both days inclusive."""
        ...

    async def usage_by_key(
        self, account_id: str, since_day: str, until_day: str
    ) -> list[KeyUsageRow]:
        """Totals by UTC day and API key, both days inclusive."""
        ...

    async def mark_once(self, name: str) -> bool:
        """True for the first caller ever to mark `name` (across every process), else False."""
        ...

    # -- listings (Mission Control) --------------------------------------------------------------
    async def list_accounts(self, limit: int) -> list[Account]: ...
    async def list_keys(self, account_id: str) -> list[ApiKey]:
        """The account's keys, revoked ones included, oldest first."""
        ...

    # -- webhooks ---------------------------------------------------------------------------------
    async def put_webhook(self, webhook: Webhook, usage_cursor: str, usage_period: int) -> None:
        """Create or replace the endpoint. The usage cursor and period are set only when the
        account had no webhook: changing the URL never re-reports or skips usage."""
        ...

    async def get_webhook(self, account_id: str) -> Webhook | None: ...
    async def delete_webhook(self, account_id: str) -> bool:
        """Remove the endpoint (pending deliveries then fail; the log stays). False if none."""
        ...

    async def webhook_accounts(self) -> list[str]: ...
    async def usage_cursor(self, account_id: str) -> str:
        """The position of the account's newest settled ledger entry (opaque)."""
        ...

    async def usage_since(self, account_id: str, cursor: str) -> tuple[list[UsageRow], str]:
        """Totals by model (day "") of the entries settled after `cursor`, and the new cursor."""
        ...

    async def webhook_usage_state(self, account_id: str) -> tuple[str, int] | None:
        """(cursor, last reported period) of the account's webhook."""
        ...

    async def add_usage_event(
        self, account_id: str, period: int, cursor: str, delivery: Delivery
    ) -> bool:
        """Atomically: if `period` is later than the last reported one, store the delivery and
        move the cursor and period on. False (nothing stored) when the period was reported."""
        ...

    async def add_delivery(self, delivery: Delivery) -> bool:
        """Store a new pending delivery; False if its id exists."""
        ...

    async def save_delivery(self, delivery: Delivery) -> None:
        """Record an attempt's outcome (status, next attempt, attempts)."""
        ...

    async def due_deliveries(self, now: float, limit: int) -> list[Delivery]:
        """Pending deliveries whose next attempt is due, earliest first."""
        ...

    async def list_deliveries(self, account_id: str, limit: int) -> list[Delivery]:
        """Newest first."""
        ...

    # -- invoices ---------------------------------------------------------------------------------
    async def create_invoice(
        self, account_id: str, amount_micros: int, description: str
    ) -> Invoice: ...

    async def get_invoice(self, invoice_id: str) -> Invoice | None: ...
    async def list_invoices(self, account_id: str) -> list[Invoice]:
        """Newest first."""
        ...

    async def pay_invoice(
        self, invoice: Invoice, paid_at: int, delivery: Delivery | None
    ) -> tuple[Invoice, bool]:
        """Atomically mark an open invoice paid and store its event's delivery. Returns the
        invoice and whether this call changed it (a second call stores nothing)."""
        ...

    # -- Mission Control users, shared secrets, the scheduler lease --------------------------------
    async def create_user(self, user: User) -> bool:
        """False if the e-mail address is taken."""
        ...

    async def get_user(self, email: str) -> User | None: ...
    async def shared_secret(self, name: str, candidate: str) -> str:
        """The value stored under `name`, storing `candidate` first if there is none: every
        replica ends up with the same value."""
        ...

    async def lease(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take or renew the lease `name` for `owner` (True while held); ttl_s = 0 releases it."""
        ...

    # -- Responses API (gateway/store/sqlite_responses.py, redis_responses.py) ---------------------
    async def put_response(self, stored: StoredResponse) -> None:
        """Keep (or replace) a response until its `expires_at`."""
        ...

    async def get_response(
        self, account_id: str, response_id: str, now: int
    ) -> StoredResponse | None:
        """The account's response; None if unknown, expired or another account's."""
        ...

    async def delete_response(self, account_id: str, response_id: str) -> bool:
        """False if the account has no such response."""
        ...

    async def list_responses(self, account_id: str, limit: int, now: int) -> list[StoredResponse]:
        """The account's unexpired responses, newest first."""
        ...


def open_store(url: str, reservation_hold_s: float = 3600.0) -> Store:
    """Build the store named by `store.url` (no I/O until first use). `reservation_hold_s`:
    Redis's `[store] reservation_hold_s` (an embedded store's reservations die with it)."""
    if url.startswith("sqlite://"):
        from gateway.store.sqlite import SqliteStore

        return SqliteStore(sqlite_path(url))
    if url.startswith(("redis://", "rediss://", "redis+cluster://", "rediss+cluster://")):
        from gateway.store.redis import RedisStore

        return RedisStore(url, reservation_hold_s)
    raise StoreError(f"store {url.split('://', 1)[0]}:// is not available in this build")


def sqlite_path(url: str) -> Path:
    """sqlite:///./data/klawd.db is relative to the working directory;
    sqlite:////abs/path.db is absolute."""
    rest = url.removeprefix("sqlite://")
    if rest.startswith("/"):
        rest = rest[1:]
    return Path(rest or "./data/klawd.db")
