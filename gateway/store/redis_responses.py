"""The Redis store's Responses API answers (a mixin of RedisStore). Keys (one account's share
its hash tag, so a cluster keeps them in one slot):

    klawd:acct:{A}:resp:<id>     StoredResponse JSON, expiring at its expires_at (EXAT)
    klawd:acct:{A}:responses     zset: response id -> expires_at (listing, newest first)

Redis drops an expired response by itself; its listing entry goes when the next response of the
account is kept (ZREMRANGEBYSCORE up to now), and listings skip what has expired meanwhile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from gateway.store.base import StoredResponse

_decoder = msgspec.json.Decoder(StoredResponse)


def _keys(account_id: str, response_id: str) -> tuple[str, str]:
    base = f"klawd:acct:{{{account_id}}}"
    return f"{base}:resp:{response_id}", f"{base}:responses"


class RedisResponses:
    if TYPE_CHECKING:

        async def _call(self, *args: Any) -> Any: ...
        async def _many(
            self, commands: list[tuple[Any, ...]], transaction: bool = False
        ) -> list[Any]: ...

    async def put_response(self, stored: StoredResponse) -> None:
        key, index = _keys(stored.account_id, stored.id)
        # one round trip (was three): the key, its place in the listing, the listing trimmed
        await self._many(
            [
                ("SET", key, msgspec.json.encode(stored), "EXAT", stored.expires_at),
                ("ZADD", index, stored.expires_at, stored.id),
                ("ZREMRANGEBYSCORE", index, "-inf", stored.created_at),
            ]
        )

    async def get_response(
        self, account_id: str, response_id: str, now: int
    ) -> StoredResponse | None:
        key, _ = _keys(account_id, response_id)
        raw = await self._call("GET", key)
        if raw is None:
            return None
        stored = _decoder.decode(raw)
        return stored if stored.expires_at > now and stored.account_id == account_id else None

    async def delete_response(self, account_id: str, response_id: str) -> bool:
        key, index = _keys(account_id, response_id)
        await self._call("ZREM", index, response_id)
        return bool(await self._call("DEL", key))

    async def list_responses(self, account_id: str, limit: int, now: int) -> list[StoredResponse]:
        _, index = _keys(account_id, "")
        ids = await self._call("ZREVRANGEBYSCORE", index, "+inf", f"({now}", "LIMIT", 0, limit)
        if not ids:
            return []
        raws = await self._call("MGET", *(_keys(account_id, _text(i))[0] for i in ids))
        found = [_decoder.decode(raw) for raw in raws if raw is not None]
        return sorted((s for s in found if s.expires_at > now), key=lambda s: (-s.created_at, s.id))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
