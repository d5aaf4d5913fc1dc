"""The store contract for the Responses API's stored responses, on SQLite, Redis and a Redis
Cluster (the `store` fixture of the store contract): kept per account, expired at expires_at,
deleted, listed newest first."""

from __future__ import annotations

import asyncio

from gateway.store.base import Store, StoredResponse
from tests.store.test_store_contract import store  # noqa: F401 (the contract's fixture)

NOW = 1_800_000_000


def stored(account_id: str, n: int, created_at: int = NOW, ttl: int = 100) -> StoredResponse:
    return StoredResponse(
        id=f"resp_{n}",
        account_id=account_id,
        created_at=created_at,
        expires_at=created_at + ttl,
        response={"id": f"resp_{n}", "output": [{"type": "message", "content": [{"text": "é"}]}]},
        input_items=[{"id": f"msg_{n}", "type": "message", "role": "user", "content": "hi"}],
        history=[{"id": "msg_0", "type": "message", "role": "user", "content": "earlier"}],
    )


async def test_a_response_is_kept_whole_for_its_account_only(store: Store) -> None:  # noqa: F811
    await store.put_response(stored("acct_a", 1))
    assert await store.get_response("acct_a", "resp_1", NOW) == stored("acct_a", 1)
    assert await store.get_response("acct_b", "resp_1", NOW) is None
    assert await store.get_response("acct_a", "resp_2", NOW) is None
    assert not await store.delete_response("acct_b", "resp_1")
    assert await store.get_response("acct_a", "resp_1", NOW) is not None


async def test_a_response_expires_at_its_time(store: Store) -> None:  # noqa: F811
    await store.put_response(stored("acct_a", 1, ttl=100))
    assert await store.get_response("acct_a", "resp_1", NOW + 99) is not None
    assert await store.get_response("acct_a", "resp_1", NOW + 100) is None
    assert await store.list_responses("acct_a", 10, NOW + 100) == []


async def test_a_deleted_response_is_gone(store: Store) -> None:  # noqa: F811
    await store.put_response(stored("acct_a", 1))
    assert await store.delete_response("acct_a", "resp_1")
    assert await store.get_response("acct_a", "resp_1", NOW) is None
    assert not await store.delete_response("acct_a", "resp_1")
    assert await store.list_responses("acct_a", 10, NOW) == []


async def test_responses_are_listed_newest_first_per_account(store: Store) -> None:  # noqa: F811
    for n in range(5):
        await store.put_response(stored("acct_a", n, created_at=NOW + n))
    await store.put_response(stored("acct_b", 9, created_at=NOW + 9))
    listed = await store.list_responses("acct_a", 3, NOW + 5)
    assert [s.id for s in listed] == ["resp_4", "resp_3", "resp_2"]
    assert [s.id for s in await store.list_responses("acct_b", 10, NOW)] == ["resp_9"]


async def test_responses_kept_at_once_are_each_retrievable_when_kept(store: Store) -> None:  # noqa: F811
    """(SQLite keeps them as a group commit: each caller returns once its own row is in.)"""

    async def keep_then_read(n: int) -> StoredResponse | None:
        await store.put_response(stored("acct_a", n, created_at=NOW + n))
        return await store.get_response("acct_a", f"resp_{n}", NOW + n)

    found = await asyncio.gather(*(keep_then_read(n) for n in range(20)))
    assert found == [stored("acct_a", n, created_at=NOW + n) for n in range(20)]
    listed = await store.list_responses("acct_a", 100, NOW + 19)
    assert [s.id for s in listed] == [f"resp_{n}" for n in reversed(range(20))]
