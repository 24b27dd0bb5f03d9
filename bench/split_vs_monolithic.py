"""Split (4 node processes on loopback) vs monolithic greedy decode of SmolLM2, measured side by side.

Prints a human-readable table and, last, one JSON line:
    {"split_tok_s", "mono_tok_s", "ratio", "ttft_s", ...}
tok/s = generated tokens / wall time of the whole generation (prefill included), median of the runs, the paths
interleaved in a fresh (seeded) order each run, so that drift and the order hit them alike. The
baseline is the monolithic model at its best thread count (measured, not assumed). ``ratio`` is the median
over runs of split ÷ monolithic measured within the same run (seconds apart), which drift on a shared machine
moves far less than a ratio of medians taken minutes apart (also printed, as ``ratio_of_medians``). The same
shards also run in a bare pipeline of as many processes with no protocol (``bare_pipeline.py``):
``bare_pipeline_ratio`` is the most any protocol could reach on this machine, and ``split_vs_bare_pipeline``
what veriswarm's costs. ``split`` is the default path (server-to-server relay); the client-mediated path (the
client forwards between hops) is measured too.

veriswarm's own shard code (``split/modeling.py``) decodes faster than ``transformers``: at one thread by a
few percent, and at two threads by far more, since it splits each one-position matmul over the threads
(``rows_linear``) where torch's matrix-vector product stays on one core. The ratio against ``transformers``
includes that. So the same code is also run monolithically (every shard in this one process, at each thread
count of --mono-threads, the best taken): ``ratio_vs_own_code`` is the cost of splitting alone.

Every path runs on this process's main thread (the split client too, on an event loop here), so that the
process holds one OpenMP thread pool: libgomp lets idle pool threads spin only briefly once a process holds
more threads than cores, and a decode at 2 threads then waits on wake-ups. The defaults are what a local
swarm ships with: one torch thread per node and for the client, and LocalSwarm's short OpenMP spin for the
nodes (GOMP_SPINCOUNT=1000 unless set); this process keeps libgomp's default spin, as any script would.
``--node-threads 2 --client-threads 2`` with GOMP_SPINCOUNT=100000 in the environment runs the nodes'
decode on both cores (see docs/benchmarks.md, session 6, for both and for why the spin matters there).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from bare_pipeline import BarePipeline  # bench/, next to this script

from veriswarm.client import AsyncClient
from veriswarm.deploy.local import LocalSwarm
from veriswarm.manifest import ModelDir
from veriswarm.split.artifacts import load_head, load_shard
from veriswarm.split.modeling import HeadModel, ShardModel
from veriswarm.split.partition import write_model_dir
from veriswarm.split.sources import config_from_hf, load_hf, resolve_source

#: as given to this run (the nodes and the bare pipeline use 1000 when it is not set; this process, libgomp's own)
GOMP_SPINCOUNT = os.environ.get("GOMP_SPINCOUNT")
PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper who finds a message in a bottle."}]


def mono_run(model, ids: list[int], n: int) -> tuple[float, float]:
    x = torch.tensor([ids])
    t0 = time.perf_counter()
    with torch.no_grad():
        first = time.perf_counter()
        out = model.generate(x, max_new_tokens=1, min_new_tokens=1, do_sample=False, pad_token_id=0)
        ttft = time.perf_counter() - first
        t0 = time.perf_counter()
        out = model.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        total = time.perf_counter() - t0
    assert out.shape[1] - len(ids) == n
    return total, ttft


@torch.inference_mode()
def own_code_run(head: HeadModel, shards: list[ShardModel], ids: list[int], n: int) -> tuple[list[int], float]:
    """Greedy ``n`` tokens through veriswarm's shard code, every shard in this process: (tokens, seconds)."""
    t0 = time.perf_counter()
    caches = [s.new_cache(len(ids) + n) for s in shards]
    x, pos, out = head.embed_tokens(torch.tensor([ids])), 0, []
    for _ in range(n):
        for shard, cache in zip(shards, caches, strict=True):
            x = shard(x, pos, cache)
        pos += x.shape[1]
        out.append(int(head.logits(x[:, -1:]).argmax(-1)))
        x = head.embed_tokens(torch.tensor([[out[-1]]]))
    return out, time.perf_counter() - t0


def _measure(args: argparse.Namespace, loop: asyncio.AbstractEventLoop, client: AsyncClient, direct: AsyncClient,
             bare: BarePipeline, model, model_dir: Path):  # type: ignore[no-untyped-def]
    ids = client.encode_chat(PROMPT)
    md = ModelDir.open(model_dir)
    own_head, own_shards = load_head(md), [load_shard(md, i) for i in range(len(md.manifest.shards))]
    mono_threads = [int(t) for t in args.mono_threads.split(",")]
    default_threads = torch.get_num_threads()
    # Warm every path (allocations, first-call overheads, relay links) before measuring; the split chain's
    # greedy tokens are what every other path must produce.
    torch.set_num_threads(args.client_threads)
    ref = loop.run_until_complete(client.generate_ids(ids, max_new_tokens=args.tokens, ignore_eos=True)).token_ids
    loop.run_until_complete(direct.generate_ids(ids, max_new_tokens=4, ignore_eos=True))
    bare.generate(ids, 4)
    for t in mono_threads:
        torch.set_num_threads(t)
        mono_run(model, ids, 4)
        own_code_run(own_head, own_shards, ids, 4)
    split_tok_s: list[float] = []
    split_ttft: list[float] = []
    direct_tok_s: list[float] = []
    bare_tok_s: list[float] = []
    mono: dict[int, tuple[list[float], list[float]]] = {t: ([], []) for t in mono_threads}
    own: dict[int, list[float]] = {t: [] for t in mono_threads}

    def run_split() -> None:
        torch.set_num_threads(args.client_threads)
        g = loop.run_until_complete(client.generate_ids(ids, max_new_tokens=args.tokens, ignore_eos=True))
        assert g.token_ids == ref and g.relayed_steps == args.tokens
        split_tok_s.append(args.tokens / g.total_s)
        split_ttft.append(g.ttft_s)

    def run_direct() -> None:
        torch.set_num_threads(args.client_threads)
        d = loop.run_until_complete(direct.generate_ids(ids, max_new_tokens=args.tokens, ignore_eos=True))
        assert d.token_ids == ref and d.relayed_steps == 0
        direct_tok_s.append(args.tokens / d.total_s)

    def run_bare() -> None:
        torch.set_num_threads(args.client_threads)
        tokens, seconds = bare.generate(ids, args.tokens)
        assert tokens == ref, "the bare pipeline and the split chain disagree"
        bare_tok_s.append(args.tokens / seconds)

    def run_own(t: int) -> None:
        torch.set_num_threads(t)
        tokens, seconds = own_code_run(own_head, own_shards, ids, args.tokens)
        assert tokens == ref, "veriswarm's code in one process and the split chain disagree"
        own[t].append(args.tokens / seconds)

    def run_mono(t: int) -> None:
        torch.set_num_threads(t)
        total, ttft = mono_run(model, ids, args.tokens)
        mono[t][0].append(args.tokens / total)
        mono[t][1].append(ttft)

    paths = [run_split, run_direct, run_bare] + [functools.partial(f, t) for t in mono_threads for f in (run_own, run_mono)]
    for r in range(args.runs):
        # A fresh order each run (seeded, so a rerun repeats it): no path is always measured right after the
        # same other one (say, right after the monolithic model had both cores).
        order = list(paths)
        random.Random(r).shuffle(order)
        for path in order:
            path()
        torch.set_num_threads(default_threads)
    return len(ids), split_tok_s, split_ttft, direct_tok_s, bare_tok_s, mono, own


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--node-threads", type=int, default=1,
                    help="torch threads per node process (0: torch's default); LocalSwarm's default is 1 (several "
                         "node processes share the machine's cores)")
    ap.add_argument("--client-threads", type=int, default=1,
                    help="torch threads of this process while it runs the split client (its embeddings and LM "
                         "head); the monolithic models are measured at every thread count in --mono-threads")
    ap.add_argument("--mono-threads", default=f"1,{torch.get_num_threads()}",
                    help="thread counts to run the monolithic model at; its best median is the baseline")
    args = ap.parse_args()

    source = resolve_source(None)
    model, tok = load_hf(source)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        write_model_dir(out=model_dir, name=source.name, cfg=config_from_hf(model.config),
                        state_dict=model.state_dict(), tokenizer=tok, num_shards=args.shards, source=source.describe())
        loop = asyncio.new_event_loop()  # the split client runs here, on the main thread (see above)
        with LocalSwarm(model_dir=model_dir, workdir=Path(tmp) / "swarm", torch_threads=args.node_threads) as swarm, \
                BarePipeline(model_dir, threads=args.node_threads or torch.get_num_threads(),
                             prefill_threads=swarm.prefill_threads) as bare:
            client, direct = AsyncClient(model_dir, swarm.urls), AsyncClient(model_dir, swarm.urls, relay=False)
            loop.run_until_complete(client.__aenter__())
            loop.run_until_complete(direct.__aenter__())
            try:
                prompt_len, split_tok_s, split_ttft, direct_tok_s, bare_tok_s, mono, own = _measure(
                    args, loop, client, direct, bare, model, model_dir)
            finally:
                loop.run_until_complete(direct.__aexit__(None, None, None))
                loop.run_until_complete(client.__aexit__(None, None, None))
                loop.close()
    mono_threads = sorted(mono)
    best = max(mono_threads, key=lambda t: statistics.median(mono[t][0]))
    mono_tok_s, mono_ttft = mono[best]
    s, m, dm = statistics.median(split_tok_s), statistics.median(mono_tok_s), statistics.median(direct_tok_s)
    paired = [a / b for a, b in zip(split_tok_s, mono_tok_s, strict=True)]
    b = statistics.median(bare_tok_s)
    paired_bare = [a / c for a, c in zip(bare_tok_s, mono_tok_s, strict=True)]
    protocol = [a / c for a, c in zip(split_tok_s, bare_tok_s, strict=True)]
    own_best = max(mono_threads, key=lambda t: statistics.median(own[t]))
    own_tok_s = own[own_best]
    own_med = statistics.median(own_tok_s)
    vs_own = [a / c for a, c in zip(split_tok_s, own_tok_s, strict=True)]
    own_vs_mono = [a / c for a, c in zip(own_tok_s, mono_tok_s, strict=True)]
    paired_direct = [a / b for a, b in zip(direct_tok_s, mono_tok_s, strict=True)]
    print(f"prompt tokens {prompt_len}, generated {args.tokens}, shards {args.shards}, runs {args.runs}, "
          f"node threads {args.node_threads}, client threads {args.client_threads}, cores {os.cpu_count()}")
    print(f"split, relay            {s:7.2f} tok/s   ttft {statistics.median(split_ttft) * 1000:7.1f} ms   "
          f"runs {[round(v, 1) for v in split_tok_s]}")
    print(f"split, client-mediated  {dm:7.2f} tok/s   runs {[round(v, 1) for v in direct_tok_s]}")
    print(f"bare pipeline (no protocol) {b:7.2f} tok/s   runs {[round(v, 1) for v in bare_tok_s]}")
    for t in mono_threads:
        print(f"monolithic, veriswarm's code, {t} thread(s) {statistics.median(own[t]):7.2f} tok/s   runs "
              f"{[round(v, 1) for v in own[t]]}" + ("   <- its best" if t == own_best else ""))
    for t in mono_threads:
        print(f"monolithic, {t} thread(s) {statistics.median(mono[t][0]):7.2f} tok/s   ttft "
              f"{statistics.median(mono[t][1]) * 1000:7.1f} ms   runs {[round(v, 1) for v in mono[t][0]]}"
              + ("   <- baseline (best)" if t == best else ""))
    print(f"split / monolithic per run: relay {[round(r, 3) for r in paired]}, "
          f"client-mediated {[round(r, 3) for r in paired_direct]}, bare pipeline {[round(r, 3) for r in paired_bare]}")
    print(f"split (relay) / bare pipeline per run: {[round(r, 3) for r in protocol]}")
    print(f"split (relay) / veriswarm's code in one process per run: {[round(r, 3) for r in vs_own]}; "
          f"that code / transformers: {[round(r, 3) for r in own_vs_mono]}")
    print(json.dumps({"split_tok_s": round(s, 3), "mono_tok_s": round(m, 3),
                      "ratio": round(statistics.median(paired), 4), "ratio_of_medians": round(s / m, 4),
                      "ttft_s": round(statistics.median(split_ttft), 4),
                      "mono_ttft_s": round(statistics.median(mono_ttft), 4),
                      "client_mediated_tok_s": round(dm, 3), "client_mediated_ratio": round(statistics.median(paired_direct), 4),
                      "bare_pipeline_tok_s": round(b, 3), "bare_pipeline_ratio": round(statistics.median(paired_bare), 4),
                      "split_vs_bare_pipeline": round(statistics.median(protocol), 4),
                      "own_code_tok_s": round(own_med, 3), "own_code_threads": own_best,
                      "ratio_vs_own_code": round(statistics.median(vs_own), 4),
                      "own_code_vs_mono": round(statistics.median(own_vs_mono), 4),
                      "mono_threads": best, "node_threads": args.node_threads, "client_threads": args.client_threads,
                      "gomp_spincount": GOMP_SPINCOUNT,
                      "load_avg_1m": round(os.getloadavg()[0], 2), "tokens": args.tokens,
                      "shards": args.shards, "runs": args.runs}))


if __name__ == "__main__":
    main()
