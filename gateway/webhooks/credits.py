"""`budget.threshold` for an account's credit: when the cost settled since the account's last
credit grant passes 80 % and 100 % of it, once per threshold and grant, on every replica
together (docs/decisions/0018).

A grant is the balance the account showed right after credits were given: its starting credit at
creation, or credits added later (`PATCH /admin/accounts/{id}`, `klawd accounts update
--credits-usd`). Each grant has a number (1 at creation, +1 per top-up): a top-up starts a new
period and so re-arms both thresholds. 80 % is passed when the cost settled since the grant
reaches 80 % of it; 100 % when it reaches the whole grant, or when what is left of the grant no
longer covers the smallest reservation among the account's requests just settled (a balance
that cannot admit such a request again is spent, though not zero); 80 % is then announced too
if it was not.

The store's settle (one round trip per batch, gateway/usage.py) returns each account's grant as
it stands after the batch, so watching costs no store read: only a crossing claims its name,
`credit:<account>:<grant>:<percent>`, with Store.mark_once, and the one process that wins stores
the event; the webhook dispatcher then signs and delivers it like any other.

    data = {"scope": "account", "account_id", "key_id": null, "key_name": null, "tags": {},
            "period": "grant", "period_start": "2026-12-03T22:54:21Z", "grant": 2,
            "threshold_percent": 80 | 100, "budget_usd", "spend_usd", "balance_usd"}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from gateway.billing import micros_to_usd
from gateway.store.base import CreditGrant, Store, UsageEntry
from gateway.webhooks.events import BUDGET_THRESHOLD, new_event

log = logging.getLogger("klawd.webhooks")

THRESHOLDS_PERCENT = (80, 100)
ANNOUNCED_KEPT = 100_000


def passed(grant: CreditGrant, smallest_reservation: int | None) -> list[int]:
    """The thresholds (percent) the grant has passed."""
    if grant.granted_micros <= 0:
        return []  # nothing was given: nothing to measure
    left = grant.granted_micros - grant.spent_micros
    spent = left <= 0 or (smallest_reservation is not None and left < smallest_reservation)
    if spent:
        return [80, 100]
    return [p for p in THRESHOLDS_PERCENT if grant.spent_micros * 100 >= grant.granted_micros * p]


class CreditWatch:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._announced: set[str] = set()  # mark names this process claimed or saw claimed

    async def settled(self, entries: list[UsageEntry], grants: dict[str, CreditGrant]) -> None:
        """Check each account of a settled batch against its grant (no store read)."""
        smallest: dict[str, int] = {}
        for entry in entries:
            if entry.reserved_micros > 0 and entry.account_id in grants:
                known = smallest.get(entry.account_id)
                if known is None or entry.reserved_micros < known:
                    smallest[entry.account_id] = entry.reserved_micros
        for account_id, grant in sorted(grants.items()):
            for percent in passed(grant, smallest.get(account_id)):
                name = f"credit:{account_id}:{grant.seq}:{percent}"
                if name not in self._announced:
                    await self._crossed(name, account_id, grant, percent)

    async def _crossed(self, name: str, account_id: str, grant: CreditGrant, percent: int) -> None:
        claimed = await self._store.mark_once(name)
        if len(self._announced) > ANNOUNCED_KEPT:
            self._announced.clear()
        self._announced.add(name)
        if not claimed:
            return
        webhook = await self._store.get_webhook(account_id)
        if webhook is None or BUDGET_THRESHOLD not in webhook.events:
            return
        granted_at = datetime.fromtimestamp(grant.granted_at, UTC)
        event = new_event(
            account_id,
            BUDGET_THRESHOLD,
            self._clock(),
            {
                "scope": "account",
                # the fields of a key's event, empty here: one shape for receivers
                "account_id": account_id,
                "key_id": None,
                "key_name": None,
                "tags": {},
                "period": "grant",
                "period_start": granted_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "grant": grant.seq,
                "threshold_percent": percent,
                "budget_usd": micros_to_usd(grant.granted_micros),
                "spend_usd": micros_to_usd(grant.spent_micros),
                "balance_usd": micros_to_usd(max(0, grant.granted_micros - grant.spent_micros)),
            },
        )
        await self._store.add_delivery(event)
        log.info(
            "budget.threshold %d%% of account %s's credit (grant %d)",
            percent,
            account_id,
            grant.seq,
        )
