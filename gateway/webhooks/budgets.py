"""`budget.threshold`: when a key's spend passes 80 % and 100 % of one of its budgets, once per
threshold and period (the UTC day, the UTC month, or ever), on every replica together.

The watcher runs after each settled batch of ledger entries (gateway/usage.py), off the request
path: for each key of the batch that has a budget it reads the key's settled spend, and for each
threshold crossed it claims the name `budget:<key>:<period>:<percent>` with Store.mark_once, so
that however many processes see the crossing, one event is stored; the webhook dispatcher then
signs and delivers it like any other event.

    data = {"account_id", "key_id", "key_name", "tags", "period": "day" | "month" | "total",
            "period_start": "2026-12-03" | "2026-12" | null, "threshold_percent": 80 | 100,
            "budget_usd", "spend_usd"}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from gateway.billing import micros_to_usd
from gateway.store.base import ApiKey, KeyPolicy, Store, UsageEntry
from gateway.webhooks.events import BUDGET_THRESHOLD, new_event

log = logging.getLogger("klawd.webhooks")

THRESHOLDS_PERCENT = (80, 100)
POLICY_TTL_S = 5.0  # as the key cache: a budget changed by PATCH is seen within this


class BudgetWatch:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._keys: dict[str, tuple[float, ApiKey | None]] = {}

    def forget(self, key_id: str) -> None:
        self._keys.pop(key_id, None)

    async def _key(self, key_id: str) -> ApiKey | None:
        cached = self._keys.get(key_id)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        key = await self._store.get_key(key_id)
        if len(self._keys) > 100_000:
            self._keys.clear()
        self._keys[key_id] = (now + POLICY_TTL_S, key)
        return key

    async def settled(self, entries: list[UsageEntry]) -> None:
        """Check every key (and day) of a settled batch against its budgets."""
        for key_id, day in sorted({(e.key_id, e.day) for e in entries if e.key_id}):
            key = await self._key(key_id)
            if key is None or not _has_budget(key.policy):
                continue
            spend = (await self._store.key_spend(key.account_id, [key.id], day))[key.id]
            budget = key.policy.budget
            for period, start, cap, spent in (
                ("day", day, budget.day_micros, spend.today),
                ("month", day[:7], budget.month_micros, spend.month),
                ("total", None, budget.total_micros, spend.total),
            ):
                if cap is None:
                    continue
                for percent in THRESHOLDS_PERCENT:
                    if spent * 100 >= cap * percent:
                        await self._crossed(key, period, start, percent, cap, spent)

    async def _crossed(
        self, key: ApiKey, period: str, start: str | None, percent: int, cap: int, spent: int
    ) -> None:
        if not await self._store.mark_once(f"budget:{key.id}:{start or period}:{percent}"):
            return
        webhook = await self._store.get_webhook(key.account_id)
        if webhook is None or BUDGET_THRESHOLD not in webhook.events:
            return
        event = new_event(
            key.account_id,
            BUDGET_THRESHOLD,
            self._clock(),
            {
                "account_id": key.account_id,
                "key_id": key.id,
                "key_name": key.name,
                "tags": dict(key.policy.tags),
                "period": period,
                "period_start": start,
                "threshold_percent": percent,
                "budget_usd": micros_to_usd(cap),
                "spend_usd": micros_to_usd(spent),
            },
        )
        await self._store.add_delivery(event)
        log.info("budget.threshold %d%% of key %s (%s)", percent, key.id, period)


def _has_budget(policy: KeyPolicy) -> bool:
    budget = policy.budget
    return (
        budget.day_micros is not None
        or budget.month_micros is not None
        or budget.total_micros is not None
    )
