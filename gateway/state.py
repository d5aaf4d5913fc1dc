"""AppState: everything the app shares, built in the lifespan and closed in reverse order.

This is the only shared mutable state of the gateway: no module global holds a client.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.auth import KeyCache
from gateway.cache import ResponseCache
from gateway.drain import OpenStreams, shutdown_budget_s, writes_wait_s
from gateway.metering import AccountCache, Meter
from gateway.metrics import Metrics
from gateway.providers.base import HttpProvider, MessagesProvider, MissingCredentials, Provider
from gateway.providers.registry import build_provider, uses_api_key
from gateway.routing.balance import Balancer
from gateway.routing.capacity import Capacity, MemoryCapacity
from gateway.routing.catalog import Catalog, Secret, resolve_provider_keys
from gateway.routing.health import Health
from gateway.routing.retry import Retrier
from gateway.settings import Settings
from gateway.store import Store, open_store
from gateway.store.base import CreditGrant, UsageEntry
from gateway.store_metrics import timed_store
from gateway.token_charges import TokenCharges
from gateway.usage import UsageRecorder
from gateway.webhooks.budgets import BudgetWatch
from gateway.webhooks.credits import CreditWatch
from gateway.webhooks.dispatcher import Dispatcher

log = logging.getLogger("klawd")


@dataclass
class AppState:
    settings: Settings
    store: Store
    keys: KeyCache
    accounts: AccountCache
    meter: Meter
    recorder: UsageRecorder
    catalog: Catalog
    providers: dict[str, Provider]
    health: Health
    retrier: Retrier
    admin_token: Secret | None
    cache: ResponseCache
    dispatcher: Dispatcher | None = None  # webhooks; started by the app's lifespan
    # The streams open right now, ended at a shutdown's deadline (gateway/drain.py).
    streams: OpenStreams = field(default_factory=OpenStreams)
    # Writes that outlive the request that began them (a stream's stored response, shielded
    # from its client leaving): held here while they run (the loop holds tasks only weakly),
    # and waited for before the store closes (at most `drain.writes_wait_s`: then cancelled).
    writes: set[asyncio.Task[None]] = field(default_factory=set)

    @functools.cached_property
    def messages_providers(self) -> dict[str, MessagesProvider]:
        """The providers whose upstream speaks the Messages API (`/v1/messages` passed
        through), by name: found once, not per try (isinstance against a runtime-checkable
        Protocol looks for each of its members: ~80 Python calls a check)."""
        return {n: p for n, p in self.providers.items() if isinstance(p, MessagesProvider)}

    async def close(self) -> float:
        """The worker's shutdown, within `drain.shutdown_budget_s` (what the drain deadline
        leaves before the kill): the writes still running get half of it, the ledger's flush
        what is left of three quarters (at least a quarter), the kept token charges what is left
        of thirteen sixteenths (at least a sixteenth), the closes after them (providers,
        capacity, webhooks, the batch a cut flush left with the store and the after-settle
        checks, then the store) what is left of seven eighths (at least an eighth). A
        store that never answers holds none of them until the kill (decision 0013, 19zzg,
        19zzn and 19zzu). The loop time at which the budget ends: what is left of it is the
        request log's and the span exporter's (gateway/app.py)."""
        loop = asyncio.get_running_loop()
        grace_s = self.settings.server.streams.drain_grace_s
        budget = shutdown_budget_s(grace_s)
        end = loop.time() + budget
        if self.writes:
            await self._end_writes(writes_wait_s(grace_s))
        # The ledger first: what it cannot write is logged for `klawd usage replay`, and
        # a Replicate prediction's cancel (a provider's close waits for them) runs meanwhile.
        await self.recorder.close(max(budget / 4, end - budget / 4 - loop.time()))
        # The token charges the store failed (its flush above may have sent them already)
        await self.meter.token_charges.close(max(budget / 16, end - budget * 3 / 16 - loop.time()))
        await self._close_the_rest(max(budget / 8, end - budget / 8 - loop.time()))
        return end

    async def _close_the_rest(self, within_s: float) -> None:
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            *((f"provider '{n}'", p.close) for n, p in reversed(list(self.providers.items()))),
            ("the upstreams' capacity", self.retrier.capacity.close),
        ]
        if self.dispatcher is not None:
            steps.append(("the webhooks' dispatcher", self.dispatcher.close))
        # (a check that meets the closed store fails: its event is never stored)
        steps.append(("the ledger's late batch and checks", self.recorder.settled_and_checked))
        steps.append(("the store", self.store.close))
        closed = 0

        async def close_each() -> None:
            nonlocal closed
            for _, close in steps:
                await close()
                closed += 1

        if not await within(close_each(), within_s):
            log.error(
                "shutdown: %s not closed after %.2f s: left to the process's exit",
                ", ".join(what for what, _ in steps[closed:]),
                within_s,
            )
            checks, entries = self.recorder.checks_running
            if checks:
                log.error(
                    "shutdown: %d after-settle check(s) of %d usage entries unfinished after "
                    "%.2f s: left running to the process's exit (a crossing they have not "
                    "stored by then waits for a later batch)",
                    checks,
                    entries,
                    within_s,
                )

    async def _end_writes(self, wait_s: float) -> None:
        """Waits for the writes still running, at most `wait_s`: a store that never answers
        must not hold the worker until its kill. What is left then is cancelled."""
        _, left = await asyncio.wait(self.writes, timeout=wait_s)
        if not left:
            return
        for write in left:
            write.cancel()
        log.error(
            "shutdown: %d stored response write(s) unfinished after %.2f s: abandoned, "
            "those responses are not kept",
            len(left),
            wait_s,
        )
        await asyncio.sleep(0)  # (the cancelled writes take their cancel before the store closes)


async def within(step: Coroutine[Any, Any, None], seconds: float) -> bool:
    """Runs `step` for at most `seconds`: whether it ended (its exception is raised), else it
    is cancelled and left (a step that takes its cancel back must not hold the shutdown
    either)."""
    task = asyncio.ensure_future(step)
    await asyncio.wait({task}, timeout=seconds)
    if task.done():
        task.result()
        return True
    task.cancel()
    await asyncio.sleep(0)  # (it takes its cancel now)
    return False


def open_capacity(store: Store) -> Capacity:
    """Rests and caps kept where the store keeps its state: shared on Redis."""
    # A RedisStore exists only once its module is imported (by open_store); asking this way
    # keeps redis-py (and the OpenTelemetry API it imports: about 13 MB) out of a worker on
    # the embedded store.
    redis_module = sys.modules.get("gateway.store.redis")
    if redis_module is not None and isinstance(store, redis_module.RedisStore):
        from gateway.store.redis_capacity import RedisCapacity

        return RedisCapacity(store)
    return MemoryCapacity()


def count_given_back_holds(store: Store, metrics: Metrics) -> None:
    """Expired reservation holds given back (Redis only) counted in the metrics, besides the
    warning the store logs."""
    redis_module = sys.modules.get("gateway.store.redis")
    if redis_module is None or not isinstance(store, redis_module.RedisStore):
        return
    say = store.holds_given_back
    counter = metrics.holds_released

    def given_back(account_id: str, count: int) -> None:
        say(account_id, count)
        counter.inc(count)

    store.holds_given_back = given_back


async def build_state(
    settings: Settings, environ: Mapping[str, str], metrics: Metrics | None = None
) -> AppState:
    store = open_store(settings.store.url, settings.store.reservation_hold_s)
    capacity = open_capacity(store)
    if metrics is not None:
        count_given_back_holds(store, metrics)
        store = timed_store(store, metrics)  # store latency and errors
    provider_keys = resolve_provider_keys(settings, environ)
    providers: dict[str, Provider] = {}
    unavailable: dict[str, str] = {}
    for name, provider_settings in settings.providers.items():
        key = provider_keys[name]
        if uses_api_key(provider_settings.kind) and key is None:
            unavailable[name] = (
                f"provider '{name}' has no API key: set the environment variable "
                f"{provider_settings.api_key_env}"
            )
        try:
            provider = build_provider(name, provider_settings, key, environ)
        except MissingCredentials as exc:
            unavailable[name] = f"provider '{name}' {exc}"
            continue
        if provider is None:
            unavailable.setdefault(
                name, f"provider kind '{provider_settings.kind}' is not supported by this build yet"
            )
        else:
            providers[name] = provider
            if isinstance(provider, HttpProvider):
                provider.retry_policy = settings.provider_retry(name)
    admin_value = environ.get(settings.server.admin_token_env)
    if not admin_value:
        log.warning(
            "admin API disabled: the environment variable %s is not set",
            settings.server.admin_token_env,
        )
    keys = KeyCache(store)
    accounts = AccountCache(store)
    health = Health(cool_down_s=settings.routing.cooldown_s)

    budgets = BudgetWatch(store)

    def invalidate(kind: str, ident: str) -> None:
        if kind == "key":
            keys.invalidate(ident)
            budgets.forget(ident)
        elif kind == "account":
            accounts.invalidate(ident)
        else:
            keys.clear()
            accounts.clear()

    store.on_invalidate(invalidate)

    async def key_budgets(batch: list[UsageEntry], _grants: dict[str, CreditGrant]) -> None:
        await budgets.settled(batch)

    limiter = store.limiter()
    token_charges = TokenCharges(
        limiter, None if metrics is None else metrics.tokens_not_charged_by_reason
    )
    recorder = UsageRecorder(
        store,
        store.settle_interval_s,
        # (a settled batch: the store answers again, so what an outage kept is charged)
        after_settle=(key_budgets, CreditWatch(store).settled, token_charges.charge_owed),
        on_backlog=None if metrics is None else metrics.unsettled_usage.set,
    )
    recorder.start()
    retrier = Retrier(
        lambda target: settings.provider_retry(target.model.provider),
        health,
        balancer=Balancer(settings.routing.balance),
        capacity=capacity,
        cooldown_s=settings.routing.cooldown_s,
        deadline_s=settings.retry.deadline_s,
    )
    meter = Meter(settings, accounts, limiter, recorder, token_charges=token_charges)
    meter.on_served = retrier.release
    meter.on_broke_off = retrier.broke_off
    store.on_invalidate(meter.invalidated)  # an account's change ends its admission leases
    streams = OpenStreams()
    meter.streams = streams  # (a try cancelled by the drain settles as the drain's)
    if metrics is not None:
        streams.on_send_timeout = metrics.send_timeouts.inc
    return AppState(
        streams=streams,
        settings=settings,
        store=store,
        keys=keys,
        accounts=accounts,
        meter=meter,
        health=health,
        retrier=retrier,
        recorder=recorder,
        catalog=Catalog(settings, unavailable),
        providers=providers,
        admin_token=Secret(admin_value) if admin_value else None,
        cache=ResponseCache(settings.cache, store),
    )
