"""The ``--shard auto`` decision, kept pure: the swarm as seen, this node, the clock → stay or move.

The range is chosen with :func:`veriswarm.placement.best_range` (the solver `veriswarm swarm plan` uses),
given every other node's current range. Whether to *act* on it is hysteresis:

* a node that serves nothing yet takes the best range at once;
* a move that fills a hole (a shard nobody serves, so the model cannot run at all) is made at once, even
  inside the cool-down, because waiting out a cool-down would leave the swarm unusable;
* any other move must raise the swarm's bottleneck by more than ``threshold`` (relative), and not within
  ``cooldown_s`` of this node's last move. Measured speeds are noisy by several percent, so without a
  threshold two nodes of nearly equal speed would trade places on every re-check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from veriswarm.errors import ConfigError
from veriswarm.placement import NodeCapacity, Range, best_range, bottleneck


@dataclass(frozen=True)
class Policy:
    threshold: float = 0.10  # relative bottleneck gain a move must beat
    cooldown_s: float = 300.0  # no move (other than filling a hole) this soon after the last one

    def __post_init__(self) -> None:
        if self.threshold < 0 or self.cooldown_s < 0:
            raise ConfigError("--move-threshold and --cooldown-s must be >= 0")


@dataclass(frozen=True)
class Peer:
    """Another node as seen through the registry: who, how fast (layer-tokens/s), which range."""

    node: str
    speed: float
    span: Range


@dataclass(frozen=True)
class Decision:
    current: Range | None
    target: Range | None
    before: float  # swarm bottleneck (tokens/s) with this node where it is
    after: float  # ... with this node on ``target``
    move: bool
    reason: str

    def line(self) -> str:
        """One log line with the numbers behind the decision."""
        verb = "move" if self.move else "stay"
        gain = "inf" if self.before == 0 and self.after > 0 else (
            f"{(self.after / self.before - 1) * 100:+.1f}%" if self.before > 0 else "+0.0%")
        return (f"placement: {verb} {_fmt(self.current)} -> {_fmt(self.target)}: bottleneck {self.before:.3g} -> "
                f"{self.after:.3g} tok/s ({gain}); {self.reason}")


def _fmt(r: Range | None) -> str:
    return "none" if r is None else f"{r[0]}-{r[1]}"


def decide(costs: Sequence[int], me: NodeCapacity, current: Range | None, peers: Sequence[Peer], *,
           policy: Policy, now: float, last_move_at: float = -math.inf) -> Decision:
    """Where this node should be, and whether to go there now."""
    # Other nodes' capacity does not enter the coverage, only their speed and range.
    nodes = [*(NodeCapacity(p.node, p.speed, 0) for p in peers), me]
    plan: list[Range | None] = [*(p.span for p in peers), current]
    target = best_range(costs, nodes, plan, len(nodes) - 1)
    before = bottleneck(costs, nodes, plan)
    after = bottleneck(costs, nodes, [*plan[:-1], target]) if target is not None else before

    def result(move: bool, reason: str) -> Decision:
        return Decision(current, target, before, after, move, reason)

    if target is None:
        return result(False, f"no shard range fits in {me.capacity} layers")
    if target == current:
        return result(False, "already on the best range")
    if current is None:
        return result(True, "serving nothing yet")
    if before == 0 and after > 0:
        return result(True, "fills a shard nobody serves (cool-down does not apply)")
    waited = now - last_move_at
    if waited < policy.cooldown_s:
        return result(False, f"cool-down: last move {waited:.0f}s ago < {policy.cooldown_s:g}s")
    if after > before * (1 + policy.threshold):
        return result(True, f"gain above threshold {policy.threshold:.0%}")
    return result(False, f"gain not above threshold {policy.threshold:.0%}")
