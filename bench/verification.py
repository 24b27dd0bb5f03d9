"""Verification cost and power on SmolLM2 (4 shards), measured in one run.

* overhead_ratio: verifier compute ÷ serving compute at the default audit rate. Serving = every shard's
  forward passes for a session (prefill + token-by-token decode through the KV cache); verification =
  one prefill per audited (session, shard). Both timed here on the same machine, in this process.
  The audited fraction comes from the real commit–reveal beacon at the mechanism's audit probability.
* detection: per attack class, the fraction of audited sessions in which re-execution found the fault
  (measured: each class run on real sessions of the real model), and the steps a node can cheat before
  it is caught with 99% probability at the audit rate (Monte Carlo with the real beacon).
* false_slashes: honest sessions audited at two thread counts that were flagged (must be 0).
* zk_*: merged from bench/zk_slice.py (run as a subprocess) when present.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from veriswarm.incentives.mechanism import IncentiveParams, audit_probability
from veriswarm.manifest import ModelDir
from veriswarm.receipts import ReceiptDomain, hex32
from veriswarm.sinks import HopRecord
from veriswarm.split.artifacts import load_head, load_shard
from veriswarm.split.modeling import ShardModel
from veriswarm.split.partition import write_model_dir
from veriswarm.split.sources import config_from_hf, load_hf, resolve_source
from veriswarm.verifier.honeypot import Corrupt, signed_session
from veriswarm.verifier.reexec import reexecute_session
from veriswarm.verifier.sampling import AuditBeacon

KEY = bytes.fromhex("5a" * 32)
DOMAIN = ReceiptDomain()


def run_session(shard: ShardModel, index: int, manifest_hash: str, x: torch.Tensor, prompt: int,
                corrupt: Corrupt | None = None) -> tuple[list[HopRecord], float]:
    return signed_session(shard, index, manifest_hash, x, prompt, KEY, domain=DOMAIN, corrupt=corrupt, node_url="bench")


def attacks(md: ModelDir) -> dict[str, tuple[Corrupt | None, Callable[[ShardModel], ShardModel] | None]]:
    g = torch.Generator().manual_seed(3)

    def noise(scale: float) -> Corrupt:
        return lambda step, out, shard, cache: out + torch.randn(out.shape, generator=g) * out.std() * scale

    def kv(step: int, out: torch.Tensor, shard: ShardModel, cache: object) -> torch.Tensor:
        if step >= 8:
            with torch.inference_mode():
                for k in cache._k:  # type: ignore[attr-defined]
                    k[:, :, :4] += 0.5
        return out

    replay_mem: dict[tuple[int, ...], torch.Tensor] = {}

    def replay(step: int, out: torch.Tensor, shard: ShardModel, cache: object) -> torch.Tensor:
        prev = replay_mem.get(tuple(out.shape))
        replay_mem[tuple(out.shape)] = out
        return prev if prev is not None and step > 1 else out

    def wrong_weights(shard: ShardModel) -> ShardModel:
        other = load_shard(md, [s.index for s in md.manifest.shards if s.layer_start == shard.layer_start][0])
        with torch.no_grad():
            for p in other.parameters():
                p.add_(torch.randn(p.shape, generator=g) * p.std().clamp_min(1e-3) * 1e-2)
        return other

    def skip_layer(shard: ShardModel) -> ShardModel:
        other = load_shard(md, [s.index for s in md.manifest.shards if s.layer_start == shard.layer_start][0])
        other.layers = torch.nn.ModuleList(list(other.layers)[:-1])
        return other

    return {"noise_large": (noise(1e-1), None), "noise_small": (noise(1e-3), None), "kv_corrupt": (kv, None),
            "replay": (replay, None), "wrong_weights": (None, wrong_weights), "skip_layer": (None, skip_layer)}


def steps_to_detect(p: float, session_steps: int, first_cheat: int, trials: int, q: float = 0.99) -> int:
    """Monte Carlo with the real beacon: how many steps a node that cheats on every step from
    `first_cheat` on (in every session) serves until an audit covers a cheated step. An audit re-executes
    the prefix up to the last selected step, so it covers a cheated step iff max(selected) >= first_cheat.
    Returns the q-quantile over trials, counting the steps up to the covering selected step."""
    beacon = AuditBeacon()
    results = []
    for _ in range(trials):
        served = 0
        while True:
            selected = beacon.selected_steps(hex32(os.urandom(32)), 0, session_steps, p)
            hit = [k for k in selected if k >= first_cheat]
            if hit:
                results.append(served + hit[0] + 1)
                break
            served += session_steps
    results.sort()
    return results[min(len(results) - 1, int(q * len(results)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sessions", type=int, default=6)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--no-zk", action="store_true")
    args = ap.parse_args()
    source = resolve_source(None)
    model, tok = load_hf(source)
    tmp = Path(tempfile.mkdtemp())
    write_model_dir(out=tmp / "m", name=source.name, cfg=config_from_hf(model.config), state_dict=model.state_dict(),
                    tokenizer=tok, num_shards=4, source=source.describe())
    md = ModelDir.open(tmp / "m")
    shards = [load_shard(md, i) for i in range(4)]
    head = load_head(md)
    mh = md.manifest.hash
    steps = 1 + args.decode
    length = args.prompt + args.decode

    def hidden_for(shard_index: int) -> torch.Tensor:
        ids = torch.randint(0, md.manifest.config.vocab_size, (1, length))
        h = head.embed_tokens(ids)
        for s in shards[:shard_index]:
            h = s(h)
        return h

    # 1. serving vs verification compute on honest sessions, both timed at the same thread count; then the
    #    same sessions re-checked at 1 thread (untimed) for the false-fault count across thread counts.
    serve_t, verify_t, false_faults, audited_steps = 0.0, 0.0, 0, 0
    threads = torch.get_num_threads()
    for _ in range(args.sessions):
        for i, shard in enumerate(shards):
            records, t = run_session(shard, i, mh, hidden_for(i), args.prompt)
            serve_t += t
            t0 = time.perf_counter()
            verdict = reexecute_session(shard, records, DOMAIN)
            verify_t += time.perf_counter() - t0
            torch.set_num_threads(1)
            other = reexecute_session(shard, records, DOMAIN)
            torch.set_num_threads(threads)
            false_faults += int(not verdict.passed) + int(not other.passed)
            audited_steps += 2 * len(records)
    params = IncentiveParams()
    rates = {"new_node": audit_probability(params.initial_reputation, params), "trusted_node": params.p_min}
    beacon = AuditBeacon()
    # Expected share of a session re-executed: (max selected step + 1) / steps, 0 when nothing is drawn.
    # (Prefix cost is taken as proportional to its length: conservative, attention makes it cheaper.)
    def covered(p: float) -> float:
        sel = beacon.selected_steps(hex32(os.urandom(32)), 0, steps, p)
        return (max(sel) + 1) / steps if sel else 0.0

    audited_fraction = {k: statistics.mean(covered(p) for _ in range(4000)) for k, p in rates.items()}
    overhead = {k: f * verify_t / serve_t for k, f in audited_fraction.items()}

    # 2. detection per attack class on real sessions (shard 1)
    detection = {}
    x = hidden_for(1)
    for name, (corrupt, swap) in attacks(md).items():
        caught = 0
        for _ in range(3):
            serving = swap(shards[1]) if swap else shards[1]
            records, _ = run_session(serving, 1, mh, x, args.prompt, corrupt)
            caught += int(not reexecute_session(shards[1], records, DOMAIN).passed)
        first_cheat = 9 if name == "kv_corrupt" else (2 if name == "replay" else 0)
        detection[name] = {"per_audit_detection": caught / 3,
                           "steps_to_99pct_at_trusted_rate": steps_to_detect(params.p_min, steps, first_cheat, 4000)}

    print(f"sessions {args.sessions} x 4 shards, prompt {args.prompt}, decode {args.decode}, cores {os.cpu_count()}")
    print(f"serving compute {serve_t:.2f}s, full re-execution {verify_t:.2f}s ({verify_t / serve_t:.3f} of serving)")
    for k in rates:
        print(f"  {k:13s} p/step {rates[k]:.3f}  share re-executed {audited_fraction[k]:.2f}  overhead {overhead[k]:.3f}")
    for name, d in detection.items():
        print(f"  {name:14s} detected in {d['per_audit_detection']:.0%} of audits; "
              f"99% caught within {d['steps_to_99pct_at_trusted_rate']} steps")
    print(f"honest steps audited {audited_steps}, false faults {false_faults}")
    result: dict[str, object] = {
        "overhead_ratio": round(overhead["new_node"], 4), "overhead_ratio_trusted": round(overhead["trusted_node"], 4),
        "full_reexecution_ratio": round(verify_t / serve_t, 4), "audit_rate_new": round(rates["new_node"], 4),
        "audit_rate_trusted": rates["trusted_node"], "detection": detection, "false_slashes": false_faults,
        "honest_steps_audited": audited_steps,
    }
    zk = Path(__file__).with_name("zk_slice.py")
    if zk.exists() and not args.no_zk:
        out = subprocess.run([sys.executable, str(zk)], capture_output=True, text=True, timeout=1800)
        try:
            result.update(json.loads(out.stdout.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            result["zk_error"] = (out.stderr or out.stdout)[-300:]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
