"""TokenCharges (gateway/token_charges.py) over a limiter that fails as told and a driven clock:
what is kept, what a late charge charges, what is never charged twice. The store itself, stopped
and started again, is tests/integration/test_store_lost_after_admission.py's."""

from __future__ import annotations

import asyncio

from gateway.limits import LimitSpec
from gateway.store.base import StoreError, StoreNotReached
from gateway.token_charges import MAX_OWING, TokenCharges

SPEC = LimitSpec(requests_per_minute=100, requests_per_day=1000, tokens_per_minute=600)


class Limiter:
    """Records the charges it ran; `failing`: the error the next calls raise instead."""

    def __init__(self) -> None:
        self.charged: list[tuple[str, int]] = []
        self.kept_s: dict[str, float] = {}  # account id -> its last late charge's `kept_s`
        self.failing: StoreError | None = None

    async def charge_tokens(
        self, account_id: str, spec: LimitSpec, tokens: int, kept_s: float = 0.0
    ) -> None:
        if self.failing is not None:
            raise self.failing
        self.charged.append((account_id, tokens))
        self.kept_s[account_id] = kept_s


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def made(limiter: Limiter, clock: Clock) -> tuple[TokenCharges, list[tuple[str, int]]]:
    dropped: list[tuple[str, int]] = []
    charges = TokenCharges(limiter, lambda reason, tokens: dropped.append((reason, tokens)), clock)
    return charges, dropped


def test_a_charge_the_store_was_not_reached_for_is_charged_once_it_answers() -> None:
    async def main() -> None:
        limiter, clock = Limiter(), Clock()
        charges, dropped = made(limiter, clock)
        limiter.failing = StoreNotReached("redis store failed: RespConnectionError")
        await charges.charge("a", SPEC, 100, "r1")
        await charges.charge("a", SPEC, 50, "r2")
        await charges.charge("b", SPEC, 30, "r3")
        assert (limiter.charged, charges.owing, dropped) == ([], 2, [])
        await charges.charge_owed([], {})  # still not reached: kept, as they were
        assert (limiter.charged, charges.owing) == ([], 2)
        limiter.failing = None
        await charges.charge_owed([], {})
        assert sorted(limiter.charged) == [("a", 150), ("b", 30)]
        assert (charges.owing, dropped) == (0, [])
        await charges.charge_owed([], {})  # nothing left: nothing charged twice
        assert len(limiter.charged) == 2

    asyncio.run(main())


def test_what_is_charged_late_is_what_the_bucket_would_still_be_short_of() -> None:
    """600 tokens a minute refill 10 a second: 300 kept, 12 s later 180 short; 60 s later the
    bucket would be full again, and nothing is charged."""

    async def main() -> None:
        limiter, clock = Limiter(), Clock()
        charges, _ = made(limiter, clock)
        limiter.failing = StoreNotReached("not reached")
        await charges.charge("a", SPEC, 300, "r1")
        clock.now += 6
        await charges.charge("b", SPEC, 300, "r2")
        clock.now += 6
        limiter.failing = None
        await charges.charge_owed([], {})
        assert sorted(limiter.charged) == [("a", 180), ("b", 240)]
        limiter.failing = StoreNotReached("not reached")
        await charges.charge("c", SPEC, 300, "r3")
        clock.now += 30
        limiter.failing = None
        await charges.charge_owed([], {})
        assert (limiter.charged[-1], charges.owing) == (("b", 240), 0)  # c refilled: forgotten

    asyncio.run(main())


def test_a_charge_whose_outcome_is_unknown_is_never_charged_again() -> None:
    """A reply lost with its connection: the charge may have run. Not kept (it could count
    twice), counted as dropped; the same for a kept charge whose late charge loses its reply."""

    async def main() -> None:
        limiter, clock = Limiter(), Clock()
        charges, dropped = made(limiter, clock)
        limiter.failing = StoreError("redis store failed: RespConnectionError")
        await charges.charge("a", SPEC, 100, "r1")
        assert (charges.owing, dropped) == (0, [("unknown", 100)])
        limiter.failing = StoreNotReached("not reached")
        await charges.charge("b", SPEC, 40, "r2")
        limiter.failing = StoreError("redis store failed: RespTimeoutError")
        await charges.charge_owed([], {})
        assert (charges.owing, dropped[-1]) == (0, ("unknown", 40))
        limiter.failing = None
        await charges.charge_owed([], {})
        assert limiter.charged == []

    asyncio.run(main())


def test_past_the_accounts_kept_a_new_account_s_charge_is_dropped_and_counted() -> None:
    async def main() -> None:
        limiter, clock = Limiter(), Clock()
        charges, dropped = made(limiter, clock)
        limiter.failing = StoreNotReached("not reached")
        for n in range(MAX_OWING):
            await charges.charge(f"a{n}", SPEC, 1, "r")
        await charges.charge("a0", SPEC, 5, "r")  # an account kept already: still kept
        await charges.charge("late", SPEC, 7, "r")
        assert (charges.owing, dropped) == (MAX_OWING, [("full", 7)])

    asyncio.run(main())


def test_a_late_charge_says_how_long_ago_its_bucket_was_full() -> None:
    """`kept_s`: since the account's first kept charge (the store takes the shortfall from its
    bucket as it was then), kept across a late charge that did not reach the store either."""

    async def main() -> None:
        limiter, clock = Limiter(), Clock()
        charges, _ = made(limiter, clock)
        limiter.failing = StoreNotReached("not reached")
        await charges.charge("a", SPEC, 300, "r1")
        clock.now += 2
        await charges.charge("a", SPEC, 100, "r2")
        clock.now += 3
        await charges.charge_owed([], {})  # not reached: kept as it was
        clock.now += 1
        limiter.failing = None
        await charges.charge_owed([], {})
        assert (limiter.charged, limiter.kept_s) == ([("a", 340)], {"a": 6.0})

    asyncio.run(main())


def test_an_owing_account_s_admissions_wait_for_one_late_charge() -> None:
    """`landed`: the account's kept charge sent before its admission, once however many of its
    admissions wait; another account's admission waits for nothing; the store still not
    reached, the charge is kept again."""

    async def main() -> None:
        limiter, clock = Limiter(), Clock()
        charges, _ = made(limiter, clock)
        limiter.failing = StoreNotReached("not reached")
        await charges.charge("a", SPEC, 300, "r1")
        await charges.charge("b", SPEC, 60, "r2")
        await charges.landed("a")
        assert (limiter.charged, charges.owing) == ([], 2)
        limiter.failing = None
        await charges.landed("c")
        assert (limiter.charged, charges.kept) == ([], True)

        async def admitted() -> list[tuple[str, int]]:
            await charges.landed("a")
            return list(limiter.charged)  # what the admission would see charged

        seen = await asyncio.gather(admitted(), admitted(), admitted())
        assert list(seen) == [[("a", 300)]] * 3
        assert (limiter.charged, charges.owing) == ([("a", 300)], 1)
        await charges.charge_owed([], {})
        await charges.landed("b")
        assert (limiter.charged, charges.kept) == ([("a", 300), ("b", 60)], False)

    asyncio.run(main())
