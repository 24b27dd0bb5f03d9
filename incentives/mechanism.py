"""The incentive mechanism: reputation, audit probability, and reward allocation.

eFedLLM's intent, made concrete (docs/incentives.md has the derivations):

* **Work** of a receipt = tokens × layers run (what the node actually computed).
* **Reputation** r ∈ [0, 1] is an EMA of audit outcomes: r ← (1-α)·r + α·o, o = 1 (pass) or 0
  (miss: the node did not answer an audit). A *proven fault* is not averaged: it excludes the node at once
  (and becomes slashing evidence).
* **Exclusion** when r < floor, or on one proven fault.
* **Reward** of node i in an epoch: pool · w_i / Σ w_j with w_i = work_i · r_i^γ, paid only for epochs at
  least ``payout_delay_epochs`` old, so a later fault can claw back the unpaid rewards.
* **Audit probability** p(r) rises as reputation falls, and is never below the deterrence bound
  p ≥ C / (R + S) that makes cheating a loss in expectation (C: what cheating saves, R: rewards at risk,
  S: stake at risk).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

from .errors import LedgerError


@dataclass(frozen=True)
class IncentiveParams:
    gamma: float = 2.0
    ema_alpha: float = 0.05
    initial_reputation: float = 0.5
    exclusion_floor: float = 0.2
    # Per-step audit rate for a node with a perfect record. A node that cheats on every step is caught
    # within 200 steps with 99% probability once (1 - p)^200 < 1%, p > 0.023; one that cheats only from
    # the 9th step of each 33-step session (a KV-cache corruption) exposes 25 of every 33 steps, which needs
    # (1 - p)^151 < 1%, p > 0.030. 0.035 meets both with margin (measured in bench/verification.py).
    p_min: float = 0.035
    p_max: float = 0.25  # audit rate for a node at the exclusion floor
    safety: float = 2.0  # multiple of the deterrence bound the audit rate keeps
    payout_delay_epochs: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.ema_alpha <= 1:
            raise LedgerError("ema_alpha must be in (0, 1]")
        if not 0 <= self.exclusion_floor < self.initial_reputation <= 1:
            raise LedgerError("need 0 <= exclusion_floor < initial_reputation <= 1")
        if not 0 < self.p_min <= self.p_max <= 1:
            raise LedgerError("need 0 < p_min <= p_max <= 1")
        if self.gamma < 0 or self.safety < 1 or self.payout_delay_epochs < 0:
            raise LedgerError("gamma >= 0, safety >= 1 and payout_delay_epochs >= 0 are required")


def updated_reputation(reputation: float, passed: bool, params: IncentiveParams) -> float:
    return (1 - params.ema_alpha) * reputation + params.ema_alpha * (1.0 if passed else 0.0)


def excluded(reputation: float, params: IncentiveParams) -> bool:
    return reputation < params.exclusion_floor


def audit_probability(reputation: float, params: IncentiveParams, *, cheat_gain: float = 0.0,
                      reward_at_risk: float = 0.0, stake_at_risk: float = 0.0) -> float:
    """Probability of auditing one step of a node with this reputation.

    Linear from p_max at the exclusion floor to p_min at reputation 1, and at least ``safety`` times
    the deterrence bound C/(R+S) (capped at 1) when the stakes are given.
    """
    span = 1.0 - params.exclusion_floor
    trust = min(1.0, max(0.0, (reputation - params.exclusion_floor) / span))
    p = params.p_max - (params.p_max - params.p_min) * trust
    at_risk = reward_at_risk + stake_at_risk
    if cheat_gain > 0:
        p = max(p, params.safety * cheat_gain / at_risk) if at_risk > 0 else 1.0
    return min(1.0, p)


def allocate(pool: int, work: Mapping[str, int], reputation: Mapping[str, float], params: IncentiveParams) -> dict[str, int]:
    """Split ``pool`` (integer base units) over nodes by work × reputation^γ, exactly: Σ == pool when
    anyone has weight, remainders going to the largest fractional parts (ties by address)."""
    if pool < 0:
        raise LedgerError("reward pool must be non-negative")
    # Exact rational arithmetic: floats would lose wei on pools above 2**53.
    weights = {a: Fraction(w) * Fraction(reputation.get(a, 0.0) ** params.gamma)
               for a, w in work.items() if w > 0}
    weights = {a: w for a, w in weights.items() if w > 0}
    total = sum(weights.values(), Fraction(0))
    if total <= 0 or pool == 0:
        return {}
    shares = {a: pool * w / total for a, w in weights.items()}
    out = {a: int(s) for a, s in shares.items()}  # floor (shares are non-negative)
    rest = pool - sum(out.values())  # < number of nodes
    for a in sorted(shares, key=lambda a: (-(shares[a] - out[a]), a))[:rest]:
        out[a] += 1
    return {a: v for a, v in out.items() if v > 0}
