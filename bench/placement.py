"""Placement quality: `--shard auto` placement vs the exhaustive optimum and vs round-robin.

100 random swarms of 3–6 heterogeneous nodes (speed 50–400 layer-tokens/s, memory for 8, 16 or 30 layers)
over SmolLM2's 4-shard split (8, 8, 7, 7 layers). Prints a table and one JSON line with vs_optimal (mean
ratio of bottleneck throughputs), vs_round_robin, and the worst case.
"""

from __future__ import annotations

import json
import random
import statistics
import time

from veriswarm.placement import NodeCapacity, bottleneck, optimal, place, round_robin

COSTS = [8, 8, 7, 7]


def main() -> None:
    rng = random.Random(2026)
    vs_opt, vs_rr, t_place = [], [], []
    for _ in range(100):
        nodes = [NodeCapacity(f"n{i}", rng.uniform(50, 400), rng.choice([8, 16, 30])) for i in range(rng.randint(3, 6))]
        t0 = time.perf_counter()
        plan = place(COSTS, nodes)
        t_place.append(time.perf_counter() - t0)
        got = bottleneck(COSTS, nodes, plan)
        opt, _ = optimal(COSTS, nodes)
        rr = bottleneck(COSTS, nodes, round_robin(COSTS, nodes))
        if opt > 0:
            vs_opt.append(got / opt)
        if rr > 0:
            vs_rr.append(got / rr)
    print(f"100 swarms: placement/optimal mean {statistics.mean(vs_opt):.4f} (worst {min(vs_opt):.4f}); "
          f"placement/round-robin mean {statistics.mean(vs_rr):.3f} over {len(vs_rr)} swarms where round-robin "
          f"covers every shard; placement time median {statistics.median(t_place) * 1000:.1f} ms")
    print(json.dumps({"vs_optimal": round(statistics.mean(vs_opt), 4), "vs_optimal_worst": round(min(vs_opt), 4),
                      "vs_round_robin": round(statistics.mean(vs_rr), 4), "swarms": 100,
                      "round_robin_covering_swarms": len(vs_rr)}))


if __name__ == "__main__":
    main()
