"""How a model's deployments share its traffic: the order in which one request tries them.

`order(candidates)` puts the lowest `priority` tier first (a higher tier is tried only when no
deployment of a lower one can serve); within a tier the policy's choice comes first, then the
others in their configured order (the siblings a failed try goes to):

- `weighted` (default): smooth weighted round robin (nginx's): each pick adds every member's
  weight to its running score, takes the highest and subtracts the tier's total from it. Exact
  proportions over any run of picks, interleaved (3:1 gives a a b a a a b a ...), no randomness,
  so tests and operators can predict it.
- `least-busy`: the fewest requests in flight per unit of weight; ties by the weighted round
  robin among the tied.
- `least-latency`: power of two choices: two members drawn by weight, the one with the lower
  EWMA latency x (in flight + 1) wins (a deployment with no latency yet scores 0, so it is tried).
  Weights set how often a deployment is considered; the score decides between the two.

In-process state only (the policy's counters): the shared parts (rests and caps) are
routing/capacity.py's. A model with one deployment skips all of this.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

from gateway.routing.catalog import CatalogEntry

Policy = Literal["weighted", "least-busy", "least-latency"]
LATENCY_WEIGHT_OF_NEW = 0.2  # EWMA: the weight of the newest observation


class Balancer:
    def __init__(self, policy: Policy, rng: random.Random | None = None) -> None:
        self.policy: Policy = policy
        self._rng = rng or random.Random()  # noqa: S311 (load spreading, not secrets)
        self._score: dict[str, int] = {}  # smooth weighted round robin, per deployment key
        self._in_flight: dict[str, int] = {}
        self._latency_s: dict[str, float] = {}
        # id(a model's deployments) -> (them, their priority tiers in order)
        self._tiers: dict[int, tuple[Sequence[CatalogEntry], list[_Tier]]] = {}

    # -- what the request path reports ------------------------------------------------------------
    def started(self, key: str) -> None:
        self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def finished(self, key: str) -> None:
        left = self._in_flight.get(key, 0) - 1
        if left > 0:
            self._in_flight[key] = left
        else:
            self._in_flight.pop(key, None)

    def observe(self, key: str, latency_s: float) -> None:
        """The latency of a served call (to its answer, or a stream's first byte)."""
        old = self._latency_s.get(key)
        self._latency_s[key] = (
            latency_s
            if old is None
            else (1 - LATENCY_WEIGHT_OF_NEW) * old + LATENCY_WEIGHT_OF_NEW * latency_s
        )

    def in_flight(self, key: str) -> int:
        return self._in_flight.get(key, 0)

    def latency_s(self, key: str) -> float | None:
        return self._latency_s.get(key)

    # -- the choice -------------------------------------------------------------------------------
    def order(self, candidates: Sequence[CatalogEntry]) -> Sequence[CatalogEntry]:
        if len(candidates) <= 1:
            return candidates
        tiers = self._tiers.get(id(candidates))
        if tiers is None or tiers[0] is not candidates:
            grouped: dict[int, list[CatalogEntry]] = {}
            for candidate in candidates:
                grouped.setdefault(candidate.priority, []).append(candidate)
            tiers = (candidates, [_Tier(grouped[p]) for p in sorted(grouped)])
            if isinstance(candidates, tuple):  # a model's own deployments: kept for next time
                self._tiers[id(candidates)] = tiers
        ordered: list[CatalogEntry] = []
        for tier in tiers[1]:
            members = tier.members
            if len(members) == 1:
                ordered.append(members[0])
                continue
            first = self._pick(tier)
            ordered.append(first)
            for member in members:  # the siblings a failed try moves to, as configured
                if member is not first:
                    ordered.append(member)
        return ordered

    def _pick(self, tier: _Tier) -> CatalogEntry:
        if self.policy == "weighted":
            return self._round_robin(tier.members, tier.total)
        if self.policy == "least-busy":
            return self._least_busy(tier)
        return self._two_choices(tier)

    def _round_robin(self, members: Sequence[CatalogEntry], total: int) -> CatalogEntry:
        scores = self._score
        best = members[0]
        best_score: int | None = None
        for member in members:
            score = scores.get(member.key, 0) + member.weight
            scores[member.key] = score
            if best_score is None or score > best_score:
                best, best_score = member, score
        scores[best.key] -= total
        return best

    def _least_busy(self, tier: _Tier) -> CatalogEntry:
        in_flight = self._in_flight
        members = tier.members
        if not in_flight:  # nothing in flight anywhere: every member ties
            return self._round_robin(members, tier.total)
        lowest = min(in_flight.get(m.key, 0) / m.weight for m in members)
        tied = [m for m in members if in_flight.get(m.key, 0) / m.weight == lowest]
        if len(tied) == 1:
            return tied[0]
        return self._round_robin(tied, sum(m.weight for m in tied))

    def _latency_score(self, member: CatalogEntry) -> float:
        latency = self._latency_s.get(member.key)
        return 0.0 if latency is None else latency * (self._in_flight.get(member.key, 0) + 1)

    def _two_choices(self, tier: _Tier) -> CatalogEntry:
        """Two distinct members drawn in proportion to weight; the lower score wins."""
        members = tier.members
        point = self._rng.random() * tier.total
        first = members[-1]
        for member in members:
            point -= member.weight
            if point < 0:
                first = member
                break
        point = self._rng.random() * (tier.total - first.weight)
        second = members[-1] if members[-1] is not first else members[-2]
        for member in members:
            if member is first:
                continue
            point -= member.weight
            if point < 0:
                second = member
                break
        return second if self._latency_score(second) < self._latency_score(first) else first


class _Tier:
    """The members of one priority tier and their total weight."""

    __slots__ = ("members", "total")

    def __init__(self, members: list[CatalogEntry]) -> None:
        self.members = members
        self.total = sum(m.weight for m in members)
