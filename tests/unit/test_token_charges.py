"""TokenCharges (gateway/token_charges.py) over a limiter that fails as told and a driven clock:
what is kept, what a late charge charges, what is never charged twice, what a shutdown sends.
The store itself is tests/store/test_idempotent_token_charges.py's and
tests/integration/test_store_lost_after_admission.py's."""

from __future__ import annotations

import asyncio

from gateway.limits import Charges, LimitSpec
from gateway.store.base import StoreError
from gateway.token_charges import KEPT_LIFE_S, MAX_OWING, TokenCharges

SPEC = LimitSpec(requests_per_minute=100, requests_per_day=1000, tokens_per_minute=600)


class Limiter:
    """Records the charges it ran, and remembers their ids as the store does
    (`klawd_charge_tokens_v3`: a charge seen already is not taken again). `failing`: the error
    the next calls raise instead of running; `lost_replies`: the next calls run, then raise
    (their reply lost)."""

    def __init__(self) -> None:
        self.charged: list[tuple[str, int]] = []
        self.kept_s: dict[str, float] = {}  # account id -> its last late charge's `kept_s`
        self.seen: set[str] = set()
        self.failing: StoreError | None = None
        self.lost_replies = False

    async def charge_tokens(
        self,
        account_id: str,
        spec: LimitSpec,
        tokens: int,
        charges: Charges = (),
        kept_s: float = 0.0,
    ) -> None:
        if self.failing is not None:
            raise self.failing
        tokens -= sum(part for charge_id, part in charges if charge_id in self.seen)
        self.seen |= {charge_id for charge_id, _ in charges}
        if tokens > 0:
            self.charged.append((account_id, tokens))
            self.kept_s[account_id] = kept_s
        if self.lost_replies:
            raise StoreError("redis store failed: RespTimeoutError")


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
        limiter.failing = StoreError("redis store failed: RespConnectionError")
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
        limiter.failing = StoreError("redis store failed: RespConnectionError")
        await charges.charge("a", SPEC, 300, "r1")
        clock.now += 6
        await charges.charge("b", SPEC, 300, "r2")
        clock.now += 6
        limiter.failing = None
        await charges.charge_owed([], {})
        assert sorted(limiter.charged) == [("a", 180), ("b", 240)]
        limiter.failing = StoreError("redis store failed: RespConnectionError")
        await charges.charge("c", SPEC, 300, "r3")
        clock.now += 30
        limiter.failing = None
        await charges.charge_owed([], {})
        assert (limiter.charged[-1], charges.owing) == (("b", 240), 0)  # c refilled: forgotten

    asyncio.run(main())


def test_a_charge_whose_reply_was_lost_is_sent_again_and_counts_once() -> None:
    """A reply lost with its connection: the charge may have run. Kept and sent again with its
    id: once if it had run (the store saw the id), once if it had not; the same for a late
    charge whose reply is lost."""

    async def main() -> None:
        limiter, clock = Limiter(), Clock()
        charges, dropped = made(limiter, clock)
        limiter.lost_replies = True  # a ran, its reply lost
        await charges.charge("a", SPEC, 100, "r1")
        limiter.lost_replies = False
        limiter.failing = StoreError("redis store failed: RespTimeoutError")  # b never ran
        await charges.charge("b", SPEC, 40, "r2")
        assert (limiter.charged, charges.owing) == ([("a", 100)], 2)
        limiter.failing, limiter.lost_replies = None, True  # the late charges run, replies lost
        await charges.charge_owed([], {})
        assert (sorted(limiter.charged), charges.owing) == ([("a", 100), ("b", 40)], 2)
        limiter.lost_replies = False
        await charges.charge_owed([], {})
        await charges.charge_owed([], {})
        assert (sorted(limiter.charged), charges.owing) == ([("a", 100), ("b", 40)], 0)
        assert dropped == []

    asyncio.run(main())


def test_a_charge_kept_past_its_life_is_dropped_and_counted() -> None:
    """The store remembers a charge's id for a while only: a charge kept longer is not sent
    (it could count twice), but counted."""

    async def main() -> None:
        limiter, clock = Limiter(), Clock()
        charges, dropped = made(limiter, clock)
        limiter.failing = StoreError("redis store failed: ConnectionError")
        await charges.charge("a", SPEC, 3000, "r1")  # 5 minutes' worth: 1790 short at 121 s
        clock.now += KEPT_LIFE_S + 1
        limiter.failing = None
        await charges.charge_owed([], {})
        assert (limiter.charged, charges.owing, dropped) == ([], 0, [("expired", 1790)])

    asyncio.run(main())


def test_the_shutdown_sends_what_is_kept_and_counts_what_the_store_still_fails() -> None:
    """`close`: the store back, the kept charge lands; still failing, sent again until the
    bound, then said and counted (`shutdown`)."""

    async def main() -> None:
        limiter, clock = Limiter(), Clock()
        charges, dropped = made(limiter, clock)
        limiter.failing = StoreError("redis store failed: RespConnectionError")
        await charges.charge("a", SPEC, 100, "r1")
        limiter.failing = None
        await charges.close(1.0)
        assert (limiter.charged, charges.kept, dropped) == ([("a", 100)], False, [])
        limiter.failing = StoreError("redis store failed: RespConnectionError")
        await charges.charge("b", SPEC, 70, "r2")
        loop = asyncio.get_running_loop()
        began = loop.time()
        await charges.close(0.3)
        assert loop.time() - began < 0.5
        assert (limiter.charged, dropped) == ([("a", 100)], [("shutdown", 70)])

    asyncio.run(main())


def test_past_the_accounts_kept_a_new_account_s_charge_is_dropped_and_counted() -> None:
    async def main() -> None:
        limiter, clock = Limiter(), Clock()
        charges, dropped = made(limiter, clock)
        limiter.failing = StoreError("redis store failed: RespConnectionError")
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
        limiter.failing = StoreError("redis store failed: RespConnectionError")
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
        limiter.failing = StoreError("redis store failed: RespConnectionError")
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
