"""The webhook scheduler: usage.updated every period, and delivery of every pending event.

Every process runs a Dispatcher; only the holder of the store's lease `webhooks` works (Redis:
SET NX PX, renewed each tick; embedded: the one process). Each tick (`poll_interval_s`, sooner
when `kick()`ed):

1. If a new period has ended (`usage_interval_s`, hourly by default), each account with a webhook
   subscribed to usage.updated gets one event with its usage since its last one. The store's
   `add_usage_event` stores it only if the period was not reported yet, so even two schedulers
   (a lease lost mid-tick) report a period once, and the cursor moves with the event.
2. Due deliveries are sent, at most `max_concurrency` at a time: POST the exact signed body,
   no redirects, `timeout_s` for the whole attempt, addresses checked by the SSRF guard at
   connect time. 2xx = delivered. Anything else is recorded and retried with exponential
   backoff and jitter until `retry_horizon_s` after the event, then the delivery has failed.

Delivery is at least once: a process that dies after the receiver answered but before recording
it will have the event sent again; receivers deduplicate by event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from gateway.metrics import Metrics
from gateway.settings import WebhookSettings
from gateway.store.base import Delivery, DeliveryAttempt, Store
from gateway.webhooks.events import USAGE_UPDATED, headers, next_attempt, usage_event
from gateway.webhooks.ssrf import check_host, describe, parse_url

if TYPE_CHECKING:
    from gateway.webhooks.sender import Sender

log = logging.getLogger("klawd.webhooks")

LEASE = "webhooks"
SENDER_MODULE = "gateway.webhooks.sender"  # aiohttp: imported at the first delivery


class Dispatcher:
    def __init__(
        self,
        store: Store,
        config: WebhookSettings,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not a secret)
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._sender: Sender | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._reported_period = -1
        self.leader = False

    # -- life -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="klawd-webhooks")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.leader:
            with contextlib.suppress(Exception):
                await self._store.lease(LEASE, self._owner, 0)
        if self._sender is not None:
            await self._sender.close()

    def kick(self) -> None:
        """Work now rather than at the next poll (a new event was stored)."""
        self._wake.set()

    async def _open_sender(self) -> Sender:
        """The delivery session's holder, its module (gateway.webhooks.sender) imported in a
        thread the first time (the import takes ~100 ms of CPU: on the loop, every open stream
        would wait for it)."""
        if self._sender is None:
            module = await asyncio.to_thread(importlib.import_module, SENDER_MODULE)
            if self._sender is None:  # another attempt may have made it meanwhile
                self._sender = module.Sender(self._config)
        return self._sender

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook tick failed; trying again at the next one")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._config.poll_interval_s)
            self._wake.clear()

    async def tick(self) -> None:
        self.leader = await self._store.lease(LEASE, self._owner, self._config.lease_ttl_s)
        if not self.leader:
            return
        now = self._clock()
        await self.report_usage(now)
        await self.deliver_due(now)

    # -- usage.updated --------------------------------------------------------------------------
    async def report_usage(self, now: float) -> int:
        """Store one usage.updated per subscribed account for the last ended period."""
        interval = self._config.usage_interval_s
        period = int(now // interval) - 1
        if period <= self._reported_period:
            return 0
        stored = 0
        for account_id in await self._store.webhook_accounts():
            try:
                stored += await self._report_account(account_id, period, now)
            except Exception:
                # this account's cursor did not move: its next event covers this period too
                log.exception("usage.updated for %s failed; it catches up next period", account_id)
        self._reported_period = period
        return stored

    async def _report_account(self, account_id: str, period: int, now: float) -> bool:
        interval = self._config.usage_interval_s
        webhook = await self._store.get_webhook(account_id)
        state = await self._store.webhook_usage_state(account_id)
        if webhook is None or state is None or USAGE_UPDATED not in webhook.events:
            return False
        cursor, last = state
        if last >= period:
            return False
        account = await self._store.get_account(account_id)
        if account is None:
            return False
        rows, new_cursor = await self._store.usage_since(account_id, cursor)
        start = (last + 1) * interval  # a missed period is covered by the next event
        event = usage_event(account, rows, start, (period + 1) * interval, now)
        return await self._store.add_usage_event(account_id, period, new_cursor, event)

    # -- delivery -------------------------------------------------------------------------------
    async def deliver_due(self, now: float) -> list[Delivery]:
        due = await self._store.due_deliveries(now, self._config.max_concurrency)
        return list(await asyncio.gather(*(self.attempt(d) for d in due)))

    async def attempt(self, delivery: Delivery) -> Delivery:
        webhook = await self._store.get_webhook(delivery.account_id)
        sender = await self._open_sender()  # before the clock: the import is not the attempt's
        started = self._clock()
        status: int | None = None
        error: str | None = None
        prefix = b""
        if webhook is None:
            error = "the account has no webhook"
        else:
            try:
                host, _ = parse_url(webhook.url)
                check_host(host, self._config.allow_private_networks)
                status, prefix = await sender.post(
                    webhook.url, delivery.body.encode(), headers(delivery, webhook, started)
                )
            except sender.ERRORS as exc:
                error = describe(exc) if not isinstance(exc, TimeoutError) else "timed out"
        ended = self._clock()
        record = DeliveryAttempt(
            at=started,
            status_code=status,
            error=error,
            duration_ms=max(0, round((ended - started) * 1000)),
            response_prefix=prefix.decode("utf-8", "replace"),
        )
        attempts = (*delivery.attempts, record)
        if status is not None and 200 <= status < 300:
            outcome, updated = (
                "delivered",
                msgspec.structs.replace(delivery, status="delivered", attempts=attempts),
            )
        else:
            retry_at = next_attempt(delivery, len(attempts), ended, self._config, self._rng)
            if retry_at is None or webhook is None:
                outcome, updated = (
                    "gave_up",
                    msgspec.structs.replace(delivery, status="failed", attempts=attempts),
                )
            else:
                outcome, updated = (
                    "failed",
                    msgspec.structs.replace(delivery, next_attempt_at=retry_at, attempts=attempts),
                )
        await self._store.save_delivery(updated)
        if self._metrics is not None:
            self._metrics.webhook_deliveries.labels(delivery.type, outcome).inc()
        return updated
