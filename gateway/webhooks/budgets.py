"""`budget.threshold`: when a key's spend passes 80 % and 100 % of one of its budgets, once per
threshold and period (the UTC day, the UTC month, or ever), on every replica together.

The watcher runs after each settled batch of ledger entries (gateway/usage.py), off the request
path. For each key of the batch that has a budget it knows the key's spend as last read plus what
this process settled since; it reads the settled spend from the store (one round trip) only when
that estimate passes a threshold not yet announced, or when the last read is older than
SPEND_REFRESH_S (other replicas spend too). For each threshold crossed it claims the name
`budget:<key>:<period>:<percent>` with Store.mark_once, so that however many processes see the
crossing, one event is stored; the webhook dispatcher then signs and delivers it like any other.

    data = {"scope": "key", "account_id", "key_id", "key_name", "tags",
            "period": "day" | "month" | "total",
            "period_start": "2026-12-03" | "2026-12" | null, "threshold_percent": 80 | 100,
            "budget_usd", "spend_usd"}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from gateway.billing import micros_to_usd
from gateway.store.base import ApiKey, KeyPolicy, KeySpend, Store, UsageEntry
from gateway.webhooks.events import BUDGET_THRESHOLD, new_event

log = logging.getLogger("klawd.webhooks")

THRESHOLDS_PERCENT = (80, 100)
POLICY_TTL_S = 5.0  # as the key cache: a budget changed by PATCH is seen within this
SPEND_REFRESH_S = 1.0  # a crossing caused by other replicas' spend is seen within this


class BudgetWatch:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._keys: dict[str, tuple[float, ApiKey | None]] = {}
        # (key id, day) -> (monotonic time of the read, spend then plus what settled here since)
        self._spend: dict[tuple[str, str], tuple[float, KeySpend]] = {}
        self._announced: set[str] = set()  # mark names this process claimed or saw claimed

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
        costs: dict[tuple[str, str], int] = {}
        for entry in entries:
            if entry.key_id:
                costs[(entry.key_id, entry.day)] = costs.get((entry.key_id, entry.day), 0) + (
                    entry.cost_micros
                )
        for (key_id, day), cost in sorted(costs.items()):
            key = await self._key(key_id)
            if key is None or not _has_budget(key.policy):
                continue
            spend = self._estimate(key_id, day, cost)
            if spend is None or self._due(key, day, spend):
                spend = (await self._store.key_spend(key.account_id, [key.id], day))[key.id]
                if len(self._spend) > 100_000:
                    self._spend.clear()
                self._spend[(key_id, day)] = (time.monotonic(), spend)
            for name, period, start, percent, cap, spent in _passed(key, day, spend):
                if name not in self._announced:
                    await self._crossed(name, key, period, start, percent, cap, spent)

    def _estimate(self, key_id: str, day: str, cost: int) -> KeySpend | None:
        """The last read spend plus this batch's cost; None if never read or read too long ago."""
        known = self._spend.get((key_id, day))
        if known is None or time.monotonic() - known[0] > SPEND_REFRESH_S:
            return None
        read_at, spend = known
        estimate = KeySpend(spend.today + cost, spend.month + cost, spend.total + cost)
        self._spend[(key_id, day)] = (read_at, estimate)
        return estimate

    def _due(self, key: ApiKey, day: str, estimate: KeySpend) -> bool:
        """Whether the estimate passes a threshold not announced yet (then read for real)."""
        return any(name not in self._announced for name, *_ in _passed(key, day, estimate))

    async def _crossed(
        self,
        name: str,
        key: ApiKey,
        period: str,
        start: str | None,
        percent: int,
        cap: int,
        spent: int,
    ) -> None:
        claimed = await self._store.mark_once(name)
        if len(self._announced) > 100_000:
            self._announced.clear()
        self._announced.add(name)
        if not claimed:
            return
        webhook = await self._store.get_webhook(key.account_id)
        if webhook is None or BUDGET_THRESHOLD not in webhook.events:
            return
        event = new_event(
            key.account_id,
            BUDGET_THRESHOLD,
            self._clock(),
            {
                "scope": "key",  # the account's credit: gateway/webhooks/credits.py
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


Crossing = tuple[str, str, str | None, int, int, int]


def _passed(key: ApiKey, day: str, spend: KeySpend) -> list[Crossing]:
    """(mark name, period, period start, percent, cap, spend) of every threshold passed."""
    budget = key.policy.budget
    out: list[Crossing] = []
    for period, start, cap, spent in (
        ("day", day, budget.day_micros, spend.today),
        ("month", day[:7], budget.month_micros, spend.month),
        ("total", None, budget.total_micros, spend.total),
    ):
        if cap is None:
            continue
        for percent in THRESHOLDS_PERCENT:
            if spent * 100 >= cap * percent:
                name = f"budget:{key.id}:{start or period}:{percent}"
                out.append((name, period, start, percent, cap, spent))
    return out


def _has_budget(policy: KeyPolicy) -> bool:
    budget = policy.budget
    return (
        budget.day_micros is not None
        or budget.month_micros is not None
        or budget.total_micros is not None
    )
