"""Failover mid-generation: SmolLM2 in 4 shards x 2 replicas (8 node processes); the node serving one
shard is SIGKILLed mid-generation; recovery_s = time from the kill to the next token. The client bans the
dead node, opens the session on the other replica and replays that shard's inputs (one step each, as
served) to rebuild its KV cache. Prints one JSON line (median over --kills kills at random steps).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from veriswarm.client import AsyncClient, Generation
from veriswarm.deploy.local import LocalSwarm
from veriswarm.split.partition import split_model


async def measure(model_dir: Path, swarm: LocalSwarm, kills: int, tokens: int) -> dict[str, object]:
    rng = random.Random(7)
    recoveries, replay_s, replayed, per_token = [], [], [], []
    async with AsyncClient(model_dir, swarm.urls, timeout_s=30) as client:
        ids = client.encode_chat([{"role": "user", "content": "Describe a walk along the coast."}])
        ref = await client.generate_ids(ids, max_new_tokens=tokens, ignore_eos=True)
        per_token.append((ref.total_s - ref.ttft_s) / (tokens - 1))
        identical = True
        for _ in range(kills):
            kill_at, shard = rng.randrange(4, tokens - 2), rng.randrange(4)
            gen = Generation("", [], len(ids), "length", [])
            killed_at: float | None = None
            recovery = None
            n = 0
            victim = None
            async for _ in client.stream_ids(ids, max_new_tokens=tokens, ignore_eos=True, into=gen):
                if killed_at is not None and recovery is None:
                    recovery = time.perf_counter() - killed_at
                if n == kill_at:
                    victim = next(x for x in swarm.nodes if x.url == gen.route[shard])
                    killed_at = time.perf_counter()
                    swarm.kill(victim, signal.SIGKILL)
                n += 1
            identical &= gen.token_ids == ref.token_ids
            assert recovery is not None and victim is not None and gen.failovers
            recoveries.append(recovery)
            replay_s.append(gen.failovers[0].recovery_s)
            replayed.append(gen.failovers[0].replayed_steps)
            swarm.respawn(victim)
            client.router.pardon(victim.url)
    step_s = statistics.median(per_token) / 4  # one shard's share of a token
    return {"recovery_s": round(statistics.median(recoveries), 3), "recovery_max_s": round(max(recoveries), 3),
            "failover_with_replay_s": round(statistics.median(replay_s), 3),
            "replayed_steps_median": statistics.median(replayed),
            "replay_compute_estimate_s": round(statistics.median(replayed) * step_s, 3),
            "identical_text": identical, "kills": kills, "tokens": tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    split_model(None, 4, tmp / "model")
    with LocalSwarm(model_dir=tmp / "model", workdir=tmp / "swarm", replicas=2, torch_threads=1) as swarm:
        result = asyncio.run(measure(tmp / "model", swarm, args.kills, args.tokens))
    print(f"kill → next token: median {result['recovery_s']}s (max {result['recovery_max_s']}s), replaying "
          f"{result['replayed_steps_median']} steps (~{result['replay_compute_estimate_s']}s of compute); "
          f"text identical to the uninterrupted run: {result['identical_text']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
