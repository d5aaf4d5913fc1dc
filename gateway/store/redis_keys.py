"""The Redis store's API keys: records with their policies (budgets, limits, allowed models,
tags), their spend per period and usage per day, and the one-time marks of budget thresholds.
A change is published on the invalidation channel so that every replica drops its cached copy.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.store.base import NO_POLICY, ApiKey, KeyPolicy, KeySpend, KeyUsageRow
from gateway.store.redis_limiter import _acct, _spend_keys


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class RedisKeys:
    if TYPE_CHECKING:

        async def _call(self, *args: Any) -> Any: ...
        async def _many(
            self, commands: list[tuple[Any, ...]], transaction: bool = False
        ) -> list[Any]: ...
        async def _publish(self, kind: str, ident: str) -> None: ...
        async def _daily(
            self, account_id: str, since_day: str, until_day: str, kind: str
        ) -> list[tuple[str, str, dict[str, int]]]: ...

    # -- keys -----------------------------------------------------------------------------------
    async def create_key(
        self,
        account_id: str,
        name: str,
        prefix: str,
        key_hash: str,
        expires_at: int | None,
        policy: KeyPolicy = NO_POLICY,
    ) -> ApiKey:
        key = ApiKey(
            new_id("key"),
            account_id,
            name,
            prefix,
            key_hash,
            int(time.time()),
            expires_at,
            None,
            policy,
        )
        # Two slots: the id -> hash index first, then the record that makes the key usable.
        await self._call("SET", f"klawd:keyid:{key.id}", key_hash)
        await self._call("SADD", f"{_acct(account_id)}:keys", key.id)  # Mission Control's list
        await self._call("SET", f"klawd:key:{key_hash}", msgspec.json.encode(key))
        return key

    async def key_by_hash(self, key_hash: str) -> ApiKey | None:
        record = await self._call("GET", f"klawd:key:{key_hash}")
        return msgspec.json.decode(record, type=ApiKey) if record else None

    async def get_key(self, key_id: str) -> ApiKey | None:
        key_hash = await self._call("GET", f"klawd:keyid:{key_id}")
        return await self.key_by_hash(key_hash.decode()) if key_hash else None

    async def update_key(self, key_id: str, policy: KeyPolicy) -> ApiKey | None:
        key = await self.get_key(key_id)
        if key is None:
            return None
        key = msgspec.structs.replace(key, policy=policy)
        await self._call("SET", f"klawd:key:{key.key_hash}", msgspec.json.encode(key))
        await self._publish("key", key_id)
        return key

    async def revoke_key(self, key_id: str, now: int) -> ApiKey | None:
        key = await self.get_key(key_id)
        if key is None:
            return None
        if key.revoked_at is None:
            key = msgspec.structs.replace(key, revoked_at=now)
            await self._call("SET", f"klawd:key:{key.key_hash}", msgspec.json.encode(key))
        await self._publish("key", key_id)
        return key

    async def key_spend(self, account_id: str, key_ids: list[str], day: str) -> dict[str, KeySpend]:
        """One pipelined round trip for all the keys (three HGETs each)."""
        commands = [
            ("HGET", name, "s")
            for key_id in key_ids
            for name in _spend_keys(account_id, key_id, day)
        ]
        replies = await self._many(commands)
        values = [int(reply or 0) for reply in replies]
        return {key_id: KeySpend(*values[3 * i : 3 * i + 3]) for i, key_id in enumerate(key_ids)}

    async def mark_once(self, name: str) -> bool:
        # The mark holds a nonce of this call: a retry of the SET (redis-py sends it again when
        # its reply timed out) finds its own nonce and claims, another call's refuses.
        key, claim = f"klawd:mark:{name}", secrets.token_hex(8)
        return bool(await self._call("SET", key, claim, "NX")) or (
            await self._call("GET", key) == claim.encode()
        )

    async def usage_by_key(
        self, account_id: str, since_day: str, until_day: str
    ) -> list[KeyUsageRow]:
        return [
            KeyUsageRow(
                day,
                "" if key_id == "-" else key_id,
                m.get("requests", 0),
                m.get("prompt_tokens", 0),
                m.get("completion_tokens", 0),
                m.get("images", 0),
                m.get("cost_micros", 0),
            )
            for day, key_id, m in await self._daily(account_id, since_day, until_day, "kusage")
        ]
