"""Shard placement: which contiguous range of shards each node serves, to raise the swarm's bottleneck.

Model: shard s costs ``cost[s]`` (its layers); node n runs ``speed[n]`` layer-tokens per second and holds
at most ``capacity[n]`` layers in memory. A node serving the contiguous range R pushes each token through
all of R, so it adds ``speed[n] / Σ_{s∈R} cost[s]`` tokens/s to every shard in R. The swarm's throughput
is its bottleneck: ``min_s Σ_{n serving s} rate``. (Petals chooses blocks by measured throughput much the
same way; LinguaLinked places layers by device capability.)

`greedy` places nodes one at a time, each on the range that most raises the bottleneck (ties: the range
with the least coverage); `improve` then lets each node move while that raises the bottleneck by more
than ``threshold`` (hysteresis, so nodes do not flap); `place` keeps the best of a few such starts.
`optimal` is exhaustive, for checking on small sets.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

Range = tuple[int, int]  # [first, last] shard indices, inclusive


@dataclass(frozen=True)
class NodeCapacity:
    name: str
    speed: float  # layer-tokens per second, measured
    capacity: int  # layers that fit in memory


def ranges(costs: Sequence[int], capacity: int) -> list[Range]:
    """Every contiguous shard range whose layers fit in ``capacity``."""
    out = []
    for a in range(len(costs)):
        total = 0
        for b in range(a, len(costs)):
            total += costs[b]
            if total > capacity:
                break
            out.append((a, b))
    return out


def coverage(costs: Sequence[int], nodes: Sequence[NodeCapacity], plan: Sequence[Range | None]) -> list[float]:
    """Tokens/s available on each shard under a plan (None: the node serves nothing)."""
    cover = [0.0] * len(costs)
    for node, r in zip(nodes, plan, strict=True):
        if r is None:
            continue
        rate = node.speed / sum(costs[r[0]:r[1] + 1])
        for s in range(r[0], r[1] + 1):
            cover[s] += rate
    return cover


def bottleneck(costs: Sequence[int], nodes: Sequence[NodeCapacity], plan: Sequence[Range | None]) -> float:
    return min(coverage(costs, nodes, plan))


def _score(cover: list[float]) -> tuple[float, ...]:
    return tuple(sorted(cover))  # lexicographic: raise the minimum first, then the next thinnest shard


def best_range(costs: Sequence[int], nodes: Sequence[NodeCapacity], plan: Sequence[Range | None], i: int) -> Range | None:
    """The range node i should serve, given every other node's choice."""
    best: tuple[tuple[float, ...], Range | None] = ((), None)
    for r in ranges(costs, nodes[i].capacity):
        trial = list(plan)
        trial[i] = r
        score = _score(coverage(costs, nodes, trial))
        if best[1] is None or score > best[0]:
            best = (score, r)
    return best[1]


def greedy(costs: Sequence[int], nodes: Sequence[NodeCapacity]) -> list[Range | None]:
    plan: list[Range | None] = [None] * len(nodes)
    for i in sorted(range(len(nodes)), key=lambda i: -nodes[i].speed):
        plan[i] = best_range(costs, nodes, plan, i)
    return plan


def improve(costs: Sequence[int], nodes: Sequence[NodeCapacity], plan: Sequence[Range | None],
            threshold: float = 0.02, rounds: int = 20) -> list[Range | None]:
    """Let nodes move one at a time while a move raises the bottleneck by more than ``threshold`` (relative)."""
    current = list(plan)
    for _ in range(rounds):
        moved = False
        for i in range(len(nodes)):
            before = bottleneck(costs, nodes, current)
            candidate = best_range(costs, nodes, current, i)
            trial = list(current)
            trial[i] = candidate
            if bottleneck(costs, nodes, trial) > before * (1 + threshold):
                current, moved = trial, True
        if not moved:
            break
    return current


def place(costs: Sequence[int], nodes: Sequence[NodeCapacity], threshold: float = 0.0, restarts: int = 12,
          seed: int = 0) -> list[Range | None]:
    """Plan from scratch: the best of several starts (greedy by speed, greedy in random join orders,
    round-robin), each improved by single-node moves. Deterministic for a given seed."""
    rng = random.Random(seed)
    starts = [greedy(costs, nodes), round_robin(costs, nodes)]
    for _ in range(restarts):
        order = list(range(len(nodes)))
        rng.shuffle(order)
        starts.append(_greedy_in_order(costs, nodes, order))
    plans = [improve(costs, nodes, p, threshold) for p in starts]
    return max(plans, key=lambda p: _score(coverage(costs, nodes, p)))


def _greedy_in_order(costs: Sequence[int], nodes: Sequence[NodeCapacity], order: Sequence[int]) -> list[Range | None]:
    plan: list[Range | None] = [None] * len(nodes)
    for i in order:
        plan[i] = best_range(costs, nodes, plan, i)
    return plan


def optimal(costs: Sequence[int], nodes: Sequence[NodeCapacity]) -> tuple[float, list[Range | None]]:
    """Exhaustive search (small sets only)."""
    options = [[*ranges(costs, n.capacity), None] for n in nodes]
    best: tuple[float, list[Range | None]] = (-1.0, [None] * len(nodes))
    for plan in itertools.product(*options):
        b = bottleneck(costs, nodes, plan)
        if b > best[0]:
            best = (b, list(plan))
    return best


def round_robin(costs: Sequence[int], nodes: Sequence[NodeCapacity]) -> list[Range | None]:
    """The naive baseline: node i serves shard i mod S (if it fits)."""
    plan: list[Range | None] = []
    for i, n in enumerate(nodes):
        s = i % len(costs)
        plan.append((s, s) if costs[s] <= n.capacity else None)
    return plan
