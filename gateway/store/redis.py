"""The shared store: Redis, for many workers and replicas.

Keys (every key of an account shares the hash tag `{acct_…}`, so one FCALL touches one slot):

    klawd:acct:{A}              hash: name, plan, limits (JSON), created_at, and the credit
                                grant: grant_seq, grant (micros), grant_at, grant_spent
    klawd:acct:{A}:credits      integer micro-dollars
    klawd:acct:{A}:rpm|rpd|tpm  limiter state (gateway/store/lua/klawd.lua)
    klawd:acct:{A}:charge_ids   sorted set: the ids of the tpm bucket's charges of the last 5
                                minutes (and up to 30 s more), by minus the time first seen
                                (klawd_charge_tokens_v4); `:charges`, by the time first seen:
                                the previous release's (v3)
    klawd:acct:{A}:usage:DAY    hash: "<model>|requests", "<model>|cost_micros", …
    klawd:acct:{A}:kusage:DAY   hash: "<key id>|requests", "<key id>|cost_micros", …
    klawd:acct:{A}:krpm|krpd:K  the API key K's own limiter state
    klawd:acct:{A}:kspend:K:d:DAY|m:MONTH|t   hash: s (settled micros), r (reserved micros)
    klawd:acct:{A}:holds        sorted set: the reservations of requests in flight by expiry,
                                "<hold id>|<micros>[|<key id>|<day>]" (klawd_admit_v3),
                                "<hold id>|0" for klawd_admit_v4's call reserving nothing (its
                                retry's proof), and "<lease id>|0" for an admission lease's
                                (klawd_admit_lease_v1)
    klawd:acct:{A}:leases       hash: lease id ("L…") -> the micros its hold still holds
    klawd:acct:{A}:ledger       stream: one entry per settle call (klawd_settle_v15: its field
                                `records`, a request's JSON record a line; v14: fields e1,
                                e2, … a request's JSON record each; before v14, one entry per
                                request, its field `entry`)
    klawd:accounts              set of account ids
    klawd:key:<sha256>          hash: the API key record
    klawd:keyid:<key id>        the key's sha256
    (webhooks, invoices, users: gateway/store/redis_webhooks.py;
     stored responses: gateway/store/redis_responses.py)

Changes that caches must see at once (revocations, plan and limit changes) are published on
`klawd:invalidate`; every replica drops the cached entry when the message arrives.

Fail-closed: when Redis cannot be reached, requests get 503 `service_unavailable` within the
socket timeouts (never a hang, never an unmetered request) and /readyz fails; both clients
reconnect by themselves when Redis is back.

One client per Redis: on a single Redis (`redis://`, `rediss://`) every command, pub/sub
included, goes through the lean multiplexed client of gateway/store/resp.py, and redis-py is not
even imported (about 10 MB less in every process that opens the store, the supervisor's first-start
check included); on a Redis Cluster, or with a URL the lean client does not take, everything goes
through redis-py (docs/decisions/0010-redis-hot-path-client.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import date, timedelta
from importlib import resources
from typing import TYPE_CHECKING, Any, cast

import msgspec

from gateway.limits import Limiter
from gateway.store.base import (
    Account,
    CreditGrant,
    CustomLimits,
    StoreError,
    UsageEntry,
    UsageRow,
)
from gateway.store.redis_keys import RedisKeys, new_id
from gateway.store.redis_limiter import (
    LibraryMissing,
    RedisLimiter,
    _acct,
    _spend_keys_in,
    holds_given_back,
)
from gateway.store.redis_responses import RedisResponses
from gateway.store.redis_webhooks import RedisWebhooks, _call_marker
from gateway.store.resp import RespClient, RespConnectionError, RespReplyError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger("klawd.redis")

CHANNEL = "klawd:invalidate"
MAX_CONNECTIONS = 256
# redis-py's subscription (see `_py_messages`): its confirmation, and the answer to its PING,
# within the store's connect and command timeouts.
SUBSCRIBE_TIMEOUT_S = 1.0
PING_TIMEOUT_S = 2.0
LIBRARY = resources.files("gateway.store").joinpath("lua/klawd.lua").read_text(encoding="utf-8")
# The upstream capacity functions (gateway/store/redis_capacity.py): a library of their own.
CAPACITY_LIBRARY = (
    resources.files("gateway.store").joinpath("lua/capacity.lua").read_text(encoding="utf-8")
)
_limits_decoder = msgspec.json.Decoder(CustomLimits)
_entry_encoder = msgspec.json.Encoder()
# klawd_settle_v15's names and entries but their ledger records, one MessagePack array (and
# v17's sums, another)
_entries_encoder = msgspec.msgpack.Encoder()

InvalidationHandler = Callable[[str, str], None]  # (kind "key" | "account", id)


def _cache_key(key: str) -> str:
    account_id, _, digest = key.partition(":")
    return f"klawd:cache:{{{account_id}}}:{digest}"


def _pairs(reply: list[Any]) -> dict[Any, Any]:
    it = iter(reply)
    return dict(zip(it, it, strict=True))


# The lean client's raw RESP2 replies shaped as redis-py's `execute_command` shapes them, for the
# commands whose shape differs (the others are the same: integers, bytes, None, flat lists), so
# that the store's code reads the same replies on either client.
_SHAPES: dict[str, Callable[[Any], Any]] = {
    "HGETALL": _pairs,
    "SMEMBERS": set,
    "SET": lambda reply: reply is not None and reply == b"OK",
    "PING": lambda reply: reply == b"PONG",
    "XRANGE": lambda reply: [(entry_id, _pairs(fields)) for entry_id, fields in reply],
    "XREVRANGE": lambda reply: [(entry_id, _pairs(fields)) for entry_id, fields in reply],
}


def _shaped(args: tuple[Any, ...], reply: Any) -> Any:
    shape = _SHAPES.get(args[0])
    if shape is not None:
        return shape(reply)
    if args[0] == "ZRANGE" and args[-1] == "WITHSCORES":
        it = iter(reply)
        return [[member, float(score)] for member, score in zip(it, it, strict=True)]
    return reply


def _reply_message(exc: RespReplyError) -> str:
    """An error reply as redis-py words it (its ResponseError drops the generic `ERR `)."""
    message = str(exc)
    return message[4:] if message.startswith("ERR ") else message


# Entries per settle call (`klawd_settle_v17`): a call runs alone on the Redis server, so a
# batch of many entries is cut into calls that each take well under a millisecond there.
SETTLE_CHUNK = 100


def _by_account(entries: list[UsageEntry]) -> list[list[UsageEntry]]:
    """The entries grouped by account (each group in the batch's order), cut to SETTLE_CHUNK."""
    groups: dict[str, list[UsageEntry]] = {}
    for entry in entries:
        groups.setdefault(entry.account_id, []).append(entry)
    return [
        group[start : start + SETTLE_CHUNK]
        for group in groups.values()
        for start in range(0, len(group), SETTLE_CHUNK)
    ]


def _position(flat: list[Any], positions: dict[str, int], name: str) -> int:
    """`name`'s position among a settle call's names (Lua's index in the array), added to them
    the first time."""
    at = positions.get(name)
    if at is None:
        flat.append(name)
        at = positions[name] = len(flat)
    return at


def _settle_command(
    entries: list[UsageEntry], function: str = "klawd_settle_v17"
) -> tuple[Any, ...]:
    """`FCALL klawd_settle_v17` (or v16, v15's twin for a batch sent again: `RedisStore.settle`;
    or v15, whose arguments v17 takes before its sums) for entries of one account
    (gateway/store/lua/klawd.lua): the
    keys its entries share (their day's usage, their API key's usage and spend) named once per
    day and key, each entry naming its group of them, its id and the second of its time (where
    its marker is kept); its model, API key and hold named once a call, each entry giving their
    positions (issue 19zzzzh); the names and entries in one MessagePack argument (their
    arguments packed one by one cost the worker more than the rest of the call: decision 0010,
    issue 19zr), but for their ledger records, one argument of their JSON lines (encoded in one
    call), which v15 stores as it comes in one field of the call's stream entry: one Lua string a
    call instead of one a record (decision 0010, twenty-sixth pass)."""
    key = _acct(entries[0].account_id)
    groups: dict[tuple[str, str], tuple[int, int]] = {}  # (day, key) -> (group, key's position)
    shared: list[str] = []
    # flat[0] (Lua's 1) is the number of names; a name's position is its 1-based index in Lua
    flat: list[Any] = [0]
    positions: dict[str, int] = {}
    values: list[Any] = []
    # (a call's entries are mostly of one model and one lease: the last ones' positions kept)
    last_model: str | None = None
    last_hold: str | None = None
    model = hold = 0
    for entry in entries:
        key_id = entry.key_id or "-"
        day = entry.day
        found = groups.get((day, key_id))
        if found is None:
            key_at = _position(flat, positions, key_id)
            found = groups[day, key_id] = (len(groups) + 1, key_at)
            shared += (
                f"{key}:usage:{day}",
                f"{key}:kusage:{day}",
                *_spend_keys_in(key, key_id, day),
            )
        group, key_at = found
        if entry.model != last_model:
            last_model = entry.model
            model = _position(flat, positions, last_model or "-")
        if entry.hold_id != last_hold:
            last_hold = entry.hold_id
            hold = _position(flat, positions, last_hold) if last_hold else 0  # 0: no hold
        values += (
            entry.reserved_micros - entry.cost_micros,
            model,
            entry.prompt_tokens,
            entry.completion_tokens,
            entry.images,
            entry.cost_micros,
            group,
            key_at,
            entry.key_reserved_micros,
            hold,
            entry.id,
            int(entry.ts),
        )
    flat[0] = len(flat) - 1
    flat += values
    keys = [f"{key}:credits", f"{key}:ledger", key, f"{key}:holds", *shared]
    command = (
        "FCALL", function, len(keys), *keys, _entries_encoder.encode(flat),
        _entry_encoder.encode_lines(entries),
    )  # fmt: skip
    if function != "klawd_settle_v17":
        return command
    return (*command, _settle_sums(entries, groups, shared))


def _settle_sums(
    entries: list[UsageEntry], groups: dict[tuple[str, str], tuple[int, int]], shared: list[str]
) -> bytes:
    """`klawd_settle_v17`'s sums of a call's entries (its comment in klawd.lua), which it applies
    at once when none of the entries was settled before and their holds hold them all; b''
    when the per-entry path must settle them anyway (an id twice in the call). Hashes are named
    by their first index in KEYS (a month's and the total's spend, and a day's usage, are shared
    by the groups of several days or keys), summed as v15 sums them."""
    if len({entry.id for entry in entries}) != len(entries):
        return b""
    running = low = spent = 0
    seconds: dict[int, list[str]] = {}
    # (group, model) -> requests, prompt, completion, images, cost, key reservation
    rows: dict[tuple[int, str], list[int]] = {}
    holds: dict[str, list[int]] = {}  # hold -> micros, micros before its last entry, entries
    for entry in entries:
        running += entry.reserved_micros - entry.cost_micros
        low = min(low, running)
        spent += entry.cost_micros
        seconds.setdefault(int(entry.ts), []).append(entry.id)
        group = groups[entry.day, entry.key_id or "-"][0]
        row = rows.get((group, entry.model or "-"))
        if row is None:
            row = rows[group, entry.model or "-"] = [0, 0, 0, 0, 0, 0]
        row[0] += 1
        row[1] += entry.prompt_tokens
        row[2] += entry.completion_tokens
        row[3] += entry.images
        row[4] += entry.cost_micros
        row[5] += entry.key_reserved_micros
        if entry.hold_id:
            hold = holds.setdefault(entry.hold_id, [0, 0, 0])
            hold[1] = hold[0]
            hold[0] += entry.reserved_micros  # (its balance delta and cost)
            hold[2] += 1
    first: dict[str, int] = {}  # key -> its first index in KEYS (Lua's)
    for at, name in enumerate(shared, start=5):
        first.setdefault(name, at)
    key_ids = {group: key_id for (_, key_id), (group, _) in groups.items()}
    usage: dict[tuple[int, str], list[int]] = {}
    spends: dict[int, list[int]] = {}
    for (group, model), row in rows.items():
        base = 5 * (group - 1)  # the group's five keys: usage, key usage, spends
        for hash_at, name in ((base, model), (base + 1, key_ids[group])):
            sums = usage.setdefault((first[shared[hash_at]], name), [0, 0, 0, 0, 0])
            for f in range(5):
                sums[f] += row[f]
        for period in (1, 2, 3):
            spend = spends.setdefault(first[shared[base + 1 + period]], [period, 0, 0])
            spend[1] += row[4]
            spend[2] += row[5]
    return _entries_encoder.encode([
        low, running, spent,
        [[second, ids] for second, ids in seconds.items()],
        [[at, name, *sums] for (at, name), sums in usage.items()],
        [[at, *spend] for at, spend in spends.items()],
        [[hold, *sums] for hold, sums in holds.items()],
    ])  # fmt: skip


class RedisStore(RedisKeys, RedisWebhooks, RedisResponses):
    """`redis://` / `rediss://`: one Redis; `redis+cluster://seed:port`: a Redis Cluster."""

    # The usage recorder's batches (gateway/store/base.py), as long as the embedded store's: a
    # settle call's fixed part (about 20 commands and the call itself, ~75 µs of Redis) is spread
    # over 2.5x the entries of a 20 ms batch (decision 0010, issue 19zv).
    settle_interval_s = 0.05

    def __init__(self, url: str, reservation_hold_s: float = 3600.0) -> None:
        self.url = url
        self.reservation_hold_ms = round(reservation_hold_s * 1000)
        self.cluster = "+cluster://" in url
        plain_url = url.replace("+cluster://", "://", 1)
        # A single Redis: the lean multiplexed client, for every command (a few connections, the
        # same timeouts), and pub/sub on a connection of its own. A URL it cannot take, and a
        # Redis Cluster (slots, redirections, node discovery), use redis-py instead, imported
        # only then.
        self._resp: RespClient | None = None
        self._redis: aioredis.Redis | aioredis.RedisCluster | None = None
        if not self.cluster:
            try:
                self._resp = RespClient.from_url(
                    plain_url, connections=2, connect_timeout_s=1.0, command_timeout_s=2.0
                )
            except ValueError as exc:
                log.info("redis store on redis-py: %s", exc)
        self._subscriber: aioredis.Redis | None = None
        if self._resp is None:
            self._redis, self._subscriber = _redis_py_clients(plain_url, self.cluster)
        # At most as many redis-py commands in flight as the pool has connections: a burst waits
        # for a free one instead of failing (the cluster client has no blocking pool of its own).
        # The lean client multiplexes: its calls need no slot.
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._library_lock = asyncio.Lock()
        self._library_loaded = False
        self._listener: asyncio.Task[None] | None = None
        self._handlers: list[InvalidationHandler] = []
        # redis-py's subscription (a Redis Cluster) silent this long is asked for a PING, as
        # the lean client's is (`RespClient.subscription_check_s`).
        self.subscription_check_s = 5.0
        # Called when expired reservation holds were given back (account, count): said in the
        # log; build_state adds the metric.
        self.holds_given_back: Callable[[str, int], None] = holds_given_back
        self._limiters: list[RedisLimiter] = []

    def limiter(self) -> Limiter:
        limiter = RedisLimiter(self)
        self._limiters.append(limiter)  # their admission leases given back by `close`
        return limiter

    # -- plumbing -------------------------------------------------------------------------------
    def _py(self) -> aioredis.Redis | aioredis.RedisCluster:
        """redis-py's client (a Redis Cluster, or a URL the lean client does not take)."""
        if self._redis is None:
            raise StoreError("redis store: no redis-py client on this URL")
        return self._redis

    async def _call(self, *args: Any) -> Any:
        """One command; its reply shaped as redis-py's `execute_command` shapes it."""
        if self._resp is not None:
            try:
                return _shaped(args, await self._resp.execute(*args))
            except (RespConnectionError, RespReplyError) as exc:
                raise StoreError(f"redis store failed: {exc.__class__.__name__}") from exc
        from redis.exceptions import RedisError

        try:
            async with self._slots:
                return await self._py().execute_command(*args)
        except RedisError as exc:
            raise StoreError(f"redis store failed: {exc.__class__.__name__}") from exc

    async def _many(self, commands: list[tuple[Any, ...]], transaction: bool = False) -> list[Any]:
        """Commands in one round trip, their replies in order (shaped as `_call`'s); `transaction`:
        MULTI/EXEC around them. Any error reply raises StoreError."""
        if self._resp is not None:
            batch = [("MULTI",), *commands, ("EXEC",)] if transaction else commands
            try:
                replies = await self._resp.execute_many(batch)
            except RespConnectionError as exc:
                raise StoreError(f"redis store failed: {exc.__class__.__name__}") from exc
            if transaction:
                replies = replies[-1]  # EXEC's: the commands' replies (QUEUED before)
                if isinstance(replies, RespReplyError) or replies is None:
                    raise StoreError("redis store failed: the transaction was refused")
            if any(isinstance(reply, RespReplyError) for reply in replies):
                raise StoreError("redis store failed: RespReplyError")
            return [_shaped(c, r) for c, r in zip(commands, replies, strict=True)]
        from redis.exceptions import RedisError

        try:
            async with self._slots, self._py().pipeline(transaction=transaction) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                return await pipe.execute()
        except RedisError as exc:
            raise StoreError(f"redis store failed: {exc.__class__.__name__}") from exc

    async def fcall(
        self,
        function: str,
        keys: list[str],
        args: list[Any],
        undo: Callable[[Any], None] | None = None,
    ) -> Any:
        """`undo`: called with the reply if the caller is cancelled while it travels (the lean
        client's `execute`; redis-py, on a Redis Cluster, cannot tell whether a cancelled call
        ran: nothing is called there)."""
        if self._resp is None:
            return await self._fcall_py(function, keys, args)
        for attempt in (1, 2):
            try:
                if not self._library_loaded:
                    await self._ensure_library()
                return await self._resp.execute(
                    "FCALL", function, len(keys), *keys, *args, undo=undo
                )
            except RespReplyError as exc:
                message = _reply_message(exc)
                # A restarted Redis without persistence has forgotten the library: load again.
                if attempt == 1 and "function not found" in message.lower():
                    self._library_loaded = False
                    continue
                raise StoreError(f"redis function {function} failed: {message}") from exc
            except RespConnectionError as exc:
                raise StoreError(f"redis store failed: {exc.__class__.__name__}") from exc
        raise StoreError(f"redis function {function} is not available")

    @property
    def lean(self) -> bool:
        """Whether the store's own lean client serves it (a single Redis): only its calls can
        be sent packed (`send_packed_fcall`), so only there are admissions leased."""
        return self._resp is not None

    @property
    def sends_packed(self) -> bool:
        """Whether `send_packed_fcall` can send now (the lean client, its library loaded)."""
        return self._library_loaded and self._resp is not None

    def send_packed_fcall(
        self, payload: bytes, undo: Callable[[Any], None] | None = None
    ) -> tuple[asyncio.Future[Any], bool] | None:
        """An `fcall` packed already (as `hiredis.pack_command` packs it) sent without waiting
        (its error reply read with `fcall_error`): the reply's future and whether it was written
        at once (`RespClient.send`: else it is queued with the loop turn's commands, to be
        awaited now). None when it cannot be sent without waiting (no open connection, the
        library not loaded yet, redis-py): call `fcall` instead. `undo`: called with the reply
        if the future is cancelled before it comes."""
        if self._resp is None or not self._library_loaded:
            return None
        return self._resp.send_packed(payload, undo)

    def fcall_error(self, reply: RespReplyError, function: str) -> StoreError:
        """The error of `send_fcall`'s call that had an error reply, as `fcall` raises it;
        LibraryMissing when Redis forgot the library (the call did not run: load it and call
        again with `fcall`)."""
        message = _reply_message(reply)
        if "function not found" in message.lower():
            self._library_loaded = False
            return LibraryMissing(function)
        return StoreError(f"redis function {function} failed: {message}")

    async def _fcall_py(self, function: str, keys: list[str], args: list[Any]) -> Any:
        from redis.exceptions import RedisError, ResponseError

        for attempt in (1, 2):
            try:
                if not self._library_loaded:
                    await self._ensure_library()
                async with self._slots:
                    return await self._py().execute_command(
                        "FCALL", function, len(keys), *keys, *args
                    )
            except ResponseError as exc:
                if attempt == 1 and "function not found" in str(exc).lower():
                    self._library_loaded = False
                    continue
                raise StoreError(f"redis function {function} failed: {exc}") from exc
            except RedisError as exc:
                raise StoreError(f"redis store failed: {exc.__class__.__name__}") from exc
        raise StoreError(f"redis function {function} is not available")

    async def _ensure_library(self) -> None:
        """Loads the functions once, however many requests arrive before it is done."""
        if self._library_loaded:
            return
        async with self._library_lock:
            if not self._library_loaded:
                await self._load_library()
                self._library_loaded = True

    async def _load_library(self) -> None:
        if self._resp is not None:
            for library in (LIBRARY, CAPACITY_LIBRARY):
                await self._resp.execute("FUNCTION", "LOAD", "REPLACE", library)
            return
        import redis.asyncio as aioredis

        client = self._py()
        if isinstance(client, aioredis.RedisCluster):
            # every primary serves some accounts' slots: each needs the library
            for node in client.get_primaries():
                for library in (LIBRARY, CAPACITY_LIBRARY):
                    await client.execute_command(
                        "FUNCTION", "LOAD", "REPLACE", library, target_nodes=node
                    )
        else:
            for library in (LIBRARY, CAPACITY_LIBRARY):
                await client.execute_command(  # type: ignore[no-untyped-call]
                    "FUNCTION", "LOAD", "REPLACE", library
                )

    async def ping(self) -> None:
        """Readiness: Redis answers."""
        await self._call("PING")

    # -- response cache (klawd:cache:{A}:<digest>, expiring by itself) ----------------------------
    async def cache_get(self, key: str) -> bytes | None:
        value = await self._hot("GET", _cache_key(key))
        return None if value is None else bytes(value)

    async def cache_put(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._hot("SET", _cache_key(key), value, "PX", max(1, round(ttl_s * 1000)))

    async def _hot(self, *args: Any) -> Any:
        return await self._call(*args)

    async def close(self) -> None:
        for limiter in self._limiters:
            await limiter.close()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._resp is not None:
            await self._resp.close()
        if self._redis is not None:
            await self._redis.aclose()
        if self._subscriber is not None and self._subscriber is not self._redis:
            await self._subscriber.aclose()

    # -- invalidation across replicas -----------------------------------------------------------
    def on_invalidate(self, handler: InvalidationHandler) -> None:
        self._handlers.append(handler)
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _publish(self, kind: str, ident: str) -> None:
        await self._call("PUBLISH", CHANNEL, f"{kind}:{ident}")

    async def _listen(self) -> None:
        while True:
            try:
                async for data in self._messages():
                    kind, _, ident = data.decode().partition(":")
                    for handler in self._handlers:
                        handler(kind, ident)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("invalidation channel lost; resubscribing in 1 s")
                # Whatever was published while we were away is unknown: caches must not trust
                # themselves beyond their TTL, which is short; signal a full drop (and again
                # once subscribed, for what was published until then).
                self._drop_all()
                await asyncio.sleep(1.0)

    def _drop_all(self) -> None:
        for handler in self._handlers:
            handler("all", "")

    async def _messages(self) -> AsyncIterator[bytes]:
        """What is published on CHANNEL; raises when the subscription is lost. Every cache is
        dropped once the subscription is confirmed: what was published before it (while the
        channel was lost, or before the first subscription) was not heard."""
        if self._resp is not None:
            async for data in self._resp.subscribe(CHANNEL, on_subscribed=self._drop_all):
                yield data
            return
        async for data in self._py_messages():
            yield data

    async def _py_messages(self) -> AsyncIterator[bytes]:
        """`_messages` on redis-py (a Redis Cluster, or a URL the lean client does not take),
        checked as the lean client's subscription is: confirmed within the connect timeout
        (1 s), then a `PING` after `subscription_check_s` without a word from Redis, answered
        within the command timeout (2 s); else StoreError (the listener drops every cache and
        subscribes again). redis-py's own `health_check_interval` would not do: it pings only
        before a read and never checks that the answer came, so a connection that died
        without a word (a NAT or a firewall that forgot it) stays silent until TCP gives up."""
        if self._subscriber is None:
            raise StoreError("redis store: no subscriber on this URL")
        loop = asyncio.get_running_loop()
        pubsub = self._subscriber.pubsub()
        try:
            await pubsub.subscribe(CHANNEL)
            confirmed = pinged = False
            wait_until = loop.time() + SUBSCRIBE_TIMEOUT_S  # for the confirmation, then a word
            while True:
                message = await pubsub.get_message(timeout=max(0.0, wait_until - loop.time()))
                if message is None:
                    if loop.time() < wait_until:
                        continue  # returned early (nothing whole to read yet)
                    if not confirmed:
                        raise StoreError("redis store failed: the subscription was not confirmed")
                    if pinged:
                        raise StoreError("redis store failed: the subscription's PING unanswered")
                    await pubsub.ping()
                    pinged = True
                    wait_until = loop.time() + PING_TIMEOUT_S
                    continue
                pinged = False  # any word from Redis: the connection is alive
                wait_until = loop.time() + self.subscription_check_s
                kind = message.get("type")
                if kind == "subscribe":
                    confirmed = True
                    self._drop_all()  # what was published before this was not heard
                elif kind == "message" and isinstance(data := message.get("data"), bytes):
                    yield data
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    # -- accounts -------------------------------------------------------------------------------
    async def count_accounts(self) -> int:
        return int(await self._call("SCARD", "klawd:accounts"))

    async def create_account(self, name: str, plan: str, credits_micros: int) -> Account:
        account = Account(
            new_id("acct"), name, plan, credits_micros, CustomLimits(), int(time.time())
        )
        key = _acct(account.id)
        # The account's own keys share a slot and are written together; the index of accounts
        # lives in another slot (Redis Cluster forbids cross-slot transactions), so it is added
        # last: an account is counted only once it exists.
        await self._many(
            [
                (
                    "HSET",
                    key,
                    "name",
                    name,
                    "plan",
                    plan,
                    "limits",
                    "{}",
                    "created_at",
                    account.created_at,
                    # the starting credit is the first grant
                    "grant_seq",
                    1,
                    "grant",
                    credits_micros,
                    "grant_at",
                    account.created_at,
                    "grant_spent",
                    0,
                ),
                ("SET", f"{key}:credits", credits_micros),
            ],
            transaction=True,
        )
        await self._call("SADD", "klawd:accounts", account.id)
        return account

    async def get_account(self, account_id: str) -> Account | None:
        """The account and its balance, its expired reservation holds given back first (the
        balance read is what the account sees: an idle account keeps no dead request's
        reservation)."""
        key = _acct(account_id)
        flat, credits, released = await self.fcall(
            "klawd_account_v1", [key, f"{key}:credits", f"{key}:holds"], []
        )
        if released:
            self.holds_given_back(account_id, int(released))
        if not flat:
            return None
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        return Account(
            account_id,
            fields[b"name"].decode(),
            fields[b"plan"].decode(),
            int(credits or 0),
            _limits_decoder.decode(fields.get(b"limits", b"{}")),
            int(fields[b"created_at"]),
        )

    async def update_account(
        self,
        account_id: str,
        *,
        plan: str | None = None,
        limits: CustomLimits | None = None,
        add_credits_micros: int = 0,
    ) -> Account | None:
        key = _acct(account_id)
        if not await self._call("EXISTS", key):
            return None
        mapping: dict[str, str] = {}
        if plan is not None:
            mapping["plan"] = plan
        if limits is not None:
            mapping["limits"] = msgspec.json.encode(limits).decode()
        if mapping:
            await self._call("HSET", key, *[x for pair in mapping.items() for x in pair])
        if add_credits_micros > 0:
            keys, args = [key, f"{key}:credits"], [add_credits_micros, int(time.time())]
            if self._resp is not None:  # the lean client sends nothing twice
                await self.fcall("klawd_grant_v1", keys, args)
            else:  # redis-py may send it again after a timed-out read: v2 adds them once a call
                await self.fcall("klawd_grant_v2", [*keys, _call_marker(account_id)], args)
        elif add_credits_micros:
            await self._call("INCRBY", f"{key}:credits", add_credits_micros)
        await self._publish("account", account_id)
        return await self.get_account(account_id)

    # -- credits and usage ----------------------------------------------------------------------
    async def reserve_credits(self, account_id: str, micros: int) -> bool:
        credits = f"{_acct(account_id)}:credits"
        if self._resp is not None:  # the lean client sends nothing twice
            return bool(await self.fcall("klawd_reserve_v1", [credits], [micros]))
        # redis-py may send it again after a timed-out read: v2 takes the credit once a call
        marker = _call_marker(account_id)
        return bool(await self.fcall("klawd_reserve_v2", [credits, marker], [micros]))

    async def release_credits(self, account_id: str, micros: int) -> None:
        await self._call("INCRBY", f"{_acct(account_id)}:credits", micros)

    async def settle(
        self, entries: list[UsageEntry], resent: bool = False
    ) -> dict[str, CreditGrant]:
        """One round trip for the batch: a pipeline of one `klawd_settle_v17` per account (and
        per SETTLE_CHUNK of its entries), which applies the entries' sums at once when it can,
        else sums their counters inside Redis entry by entry as v15 (issue 19zzzzzq). Each
        entry is applied once (its marker), so a batch retried after a lost reply settles
        nothing twice; `resent`, it is `klawd_settle_v16`, whose call that applies nothing
        answers the account's grant as v15's first try did (issue 19zzzzzl)."""
        chunks = _by_account(entries)
        function = "klawd_settle_v16" if resent else "klawd_settle_v17"
        commands = [_settle_command(chunk, function) for chunk in chunks]
        if self._resp is not None:
            try:
                if not self._library_loaded:
                    await self._ensure_library()
                results = await self._resp.execute_many(commands)
            except (RespConnectionError, RespReplyError) as exc:
                raise StoreError(f"redis store failed: {exc.__class__.__name__}") from exc
        else:
            from redis.exceptions import RedisError

            try:
                if not self._library_loaded:
                    await self._ensure_library()
                async with self._slots, self._py().pipeline(transaction=False) as pipe:
                    for command in commands:
                        pipe.execute_command(*command)
                    results = await pipe.execute(raise_on_error=False)
            except RedisError as exc:
                raise StoreError(f"redis store failed: {exc.__class__.__name__}") from exc
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            if any("function not found" in str(r).lower() for r in failed):
                self._library_loaded = False  # reloaded on the retry of the whole batch
            raise StoreError(
                f"redis settle failed for {len(failed)} of {len(commands)} calls "
                f"({len(entries)} entries)"
            )
        for chunk, result in zip(chunks, results, strict=True):
            if result[5]:
                self.holds_given_back(chunk[0].account_id, int(result[5]))
        return _grants_after(chunks, results)

    async def _daily(
        self, account_id: str, since_day: str, until_day: str, kind: str
    ) -> list[tuple[str, str, dict[str, int]]]:
        """(day, name, measures) from the per-day hashes `usage` (by model) or `kusage` (by
        key), at most 367 days back from `until_day`."""
        day = date.fromisoformat(since_day)
        last = date.fromisoformat(until_day)
        if (last - day).days > 366:
            day = last - timedelta(days=366)
        out: list[tuple[str, str, dict[str, int]]] = []
        while day <= last:
            fields = cast(
                dict[bytes, bytes],
                await self._call("HGETALL", f"{_acct(account_id)}:{kind}:{day.isoformat()}"),
            )
            per_name: dict[str, dict[str, int]] = {}
            for field, value in fields.items():
                name, _, measure = field.decode().rpartition("|")
                per_name.setdefault(name, {})[measure] = int(value)
            out.extend((day.isoformat(), name, per_name[name]) for name in sorted(per_name))
            day += timedelta(days=1)
        return out

    async def usage(self, account_id: str, since_day: str, until_day: str) -> list[UsageRow]:
        return [
            UsageRow(
                day,
                "" if model == "-" else model,
                m.get("requests", 0),
                m.get("prompt_tokens", 0),
                m.get("completion_tokens", 0),
                m.get("images", 0),
                m.get("cost_micros", 0),
            )
            for day, model, m in await self._daily(account_id, since_day, until_day, "usage")
        ]


def _grants_after(chunks: list[list[UsageEntry]], results: list[Any]) -> dict[str, CreditGrant]:
    """Each account's grant after the batch, from klawd_settle_v17's replies (v15's; one per
    chunk of one account's entries): the latest grant and, within it, the most spent (the
    replies for one account only ever grow)."""
    grants: dict[str, CreditGrant] = {}
    for chunk, result in zip(chunks, results, strict=True):
        if not isinstance(result, list) or int(result[1]) == 0:
            continue  # nothing applied (settled before), or no grant recorded
        grant = CreditGrant(int(result[1]), int(result[2]), int(result[3]), int(result[4]))
        account_id = chunk[0].account_id
        known = grants.get(account_id)
        if known is None or (grant.seq, grant.spent_micros) > (known.seq, known.spent_micros):
            grants[account_id] = grant
    return grants


def _redis_py_clients(url: str, cluster: bool) -> tuple[Any, Any]:
    """redis-py's client and subscriber, imported only when needed."""
    import redis.asyncio as aioredis

    if cluster:
        # per node; twice the commands in flight, because resolving an FCALL's slot may
        # take a second connection (COMMAND GETKEYS) besides the call's own
        client = aioredis.RedisCluster.from_url(
            url,
            socket_connect_timeout=1.0,
            socket_timeout=2.0,
            max_connections=2 * MAX_CONNECTIONS,
        )
        # Classic pub/sub is broadcast over the cluster bus: one node's connection hears every
        # PUBLISH, so the subscriber is a plain client.
        return client, aioredis.from_url(url, socket_connect_timeout=1.0)
    # A burst beyond the pool waits (up to 2 s) for a free connection instead of failing.
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=2.0,
        socket_connect_timeout=1.0,
        socket_timeout=2.0,
        health_check_interval=15,
    )
    plain = aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it
    return plain, plain
