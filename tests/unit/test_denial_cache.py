"""A throttled client is answered from memory until its Retry-After: no limiter round trip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway.auth import AuthContext
from gateway.billing import TokenUsage
from gateway.errors import RateLimited
from gateway.limits import Admission, Charges, LimitSpec
from gateway.metering import AccountCache, Meter
from gateway.routing.catalog import Catalog
from gateway.settings import load_settings
from gateway.store.base import open_store
from gateway.usage import UsageRecorder


class CountingLimiter:
    def __init__(self, outcome: str, retry_after_s: float) -> None:
        self.calls = 0
        self.outcome = outcome
        self.retry_after_s = retry_after_s

    async def admit(
        self, account_id: str, spec: LimitSpec, reserve_micros: int, key: object = None
    ) -> Admission:
        self.calls += 1
        return Admission(
            outcome=self.outcome,  # type: ignore[arg-type]
            retry_after_s=self.retry_after_s,
            limit_requests=spec.requests_per_minute,
            remaining_requests=0,
            reset_requests_s=6.0,
            limit_requests_day=spec.requests_per_day,
            remaining_requests_day=50,
        )

    async def peek(self, account_id: str, spec: LimitSpec) -> Admission:
        raise NotImplementedError

    async def charge_tokens(
        self,
        account_id: str,
        spec: LimitSpec,
        tokens: int,
        charges: Charges = (),
        kept_s: float = 0.0,
    ) -> None:
        return None


async def meter_with(limiter: CountingLimiter, tmp_path: Path) -> tuple[Meter, AuthContext, Any]:
    store = open_store(f"sqlite:///{tmp_path}/m.db")
    account = await store.create_account("t", "free", 0)
    meter = Meter(load_settings(None), AccountCache(store), limiter, UsageRecorder(store))
    return meter, AuthContext("key_1", account.id, None), store


async def test_denied_account_is_answered_from_memory_until_retry_after(tmp_path: Path) -> None:
    limiter = CountingLimiter("rate_limited", retry_after_s=30.0)
    meter, auth, store = await meter_with(limiter, tmp_path)
    try:
        for _ in range(5):
            with pytest.raises(RateLimited) as caught:
                await meter.admit(auth, "req", "m", [], lambda _: 0)
            assert 29 <= caught.value.retry_after_s <= 30  # type: ignore[operator]
        assert limiter.calls == 1
    finally:
        await store.close()


async def test_a_plan_change_bypasses_the_remembered_denial(tmp_path: Path) -> None:
    limiter = CountingLimiter("rate_limited", retry_after_s=30.0)
    meter, auth, store = await meter_with(limiter, tmp_path)
    try:
        with pytest.raises(RateLimited):
            await meter.admit(auth, "req", "m", [], lambda _: 0)
        await store.update_account(auth.account_id, plan="pro")
        meter._accounts.invalidate(auth.account_id)
        limiter.outcome = "admitted"
        ticket = await meter.admit(auth, "req", "m", [], lambda _: 0)
        assert ticket.spec.requests_per_minute == 100
        assert limiter.calls == 2
    finally:
        await store.close()


async def test_a_settled_entry_carries_each_field_by_name(tmp_path: Path) -> None:
    """`Meter.settle` makes its ledger entry positionally (the cheaper call): each field is
    the one its name says."""
    limiter = CountingLimiter("admitted", retry_after_s=0.0)
    meter, auth, store = await meter_with(limiter, tmp_path)
    try:
        ticket = await meter.admit(auth, "req_9", "m", [], lambda _: 0)
        ticket.admission = msgspec.structs.replace(
            ticket.admission, reserved_micros=70, key_reserved_micros=30, hold_id="h_1"
        )
        served = Catalog(load_settings(None), {}).get("openai/gpt-4-turbo")
        assert served is not None
        cost = meter.settle(ticket, served, TokenUsage(11, 13), 0, 201, True)
        entry = meter._recorder._pending[-1]
        assert msgspec.structs.asdict(entry) | {"id": "", "ts": 0.0, "latency_ms": 0} == {
            "id": "",
            "ts": 0.0,
            "day": ticket.day,
            "account_id": auth.account_id,
            "key_id": "key_1",
            "model": "openai/gpt-4-turbo",
            "provider": served.model.provider,
            "prompt_tokens": 11,
            "completion_tokens": 13,
            "images": 0,
            "cost_micros": cost,
            "reserved_micros": 70,
            "latency_ms": 0,
            "status": 201,
            "request_id": "req_9",
            "stream": True,
            "key_reserved_micros": 30,
            "hold_id": "h_1",
        }
        assert entry.id.startswith("u") and entry.ts >= ticket.started >= 0 < cost
    finally:
        await store.close()
