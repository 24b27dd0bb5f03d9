"""SVD-compressed vs dense SmolLM2: perplexity on the evaluation text and single-shard decode speed.

Compresses with the calibration text only (data/calibration.txt), measures perplexity on the
evaluation text (data/evaluation.txt, a different book), then decodes greedily through one shard
holding all 30 layers (ShardModel + KV cache, the node's code path), dense and compressed
interleaved run by run so drift on the machine hits both alike. tokens/s = generated tokens / wall
time of the decode loop (after a prefill that is not timed), median over the runs.

Last line, one JSON object: ppl_dense, ppl_svd, ppl_ratio, bytes_ratio, decode_speedup, and context.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from veriswarm.split.calibration import evaluation_windows
from veriswarm.split.evaluation import perplexity
from veriswarm.split.modeling import HeadModel, ShardModel
from veriswarm.split.partition import _strip_prefix
from veriswarm.split.sources import config_from_hf, load_hf, resolve_source
from veriswarm.split.svd import SvdOptions, compress_model, rank_fraction

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


@torch.inference_mode()
def decode_tok_s(shard: ShardModel, head: HeadModel, ids: list[int], n: int) -> tuple[float, list[int]]:
    cache = shard.new_cache(len(ids) + n)
    hidden = shard(head.embed_tokens(torch.tensor([ids])), 0, cache)
    token = int(head.logits(hidden[:, -1:])[0, -1].argmax())
    out = [token]
    t0 = time.perf_counter()
    for _ in range(n):
        hidden = shard(head.embed_tokens(torch.tensor([[token]])), cache.length, cache)
        token = int(head.logits(hidden)[0, -1].argmax())
        out.append(token)
    return n / (time.perf_counter() - t0), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--svd", default="method=best,bytes=0.8", help="the --svd option to measure")
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--tokens", type=int, default=64, help="decode steps per run")
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)

    source = resolve_source(None)
    model, tok = load_hf(source)
    cfg = config_from_hf(model.config)
    sd = _strip_prefix(model.state_dict())
    del model
    options = SvdOptions.parse(args.svd)
    comp = compress_model(cfg, sd, tok, options)
    lowrank = sum(p.rank is not None for p in comp.plans.values())
    log(f"compressed ({args.svd}): bytes {comp.bytes_ratio:.4f} of dense fp32, {lowrank}/{len(comp.plans)} "
        f"matrices low-rank, mean kept rank fraction {rank_fraction(comp.plans):.3f}")
    csd = comp.apply(sd)
    head = HeadModel(cfg, sd)
    dense_shard = ShardModel(cfg, 0, cfg.num_hidden_layers, sd)
    svd_shard = ShardModel(cfg, 0, cfg.num_hidden_layers, csd)

    ev = evaluation_windows(tok, tokens=args.eval_tokens)
    ppl_dense = perplexity(dense_shard, head, ev)
    ppl_svd = perplexity(svd_shard, head, ev)
    log(f"perplexity on {ev.numel()} evaluation tokens: dense {ppl_dense:.3f}, compressed {ppl_svd:.3f}")

    ids = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    decode_tok_s(dense_shard, head, ids, 4)  # warm both paths
    decode_tok_s(svd_shard, head, ids, 4)
    dense_runs, svd_runs = [], []
    agree = 0
    for _ in range(args.runs):
        d, d_tokens = decode_tok_s(dense_shard, head, ids, args.tokens)
        s, s_tokens = decode_tok_s(svd_shard, head, ids, args.tokens)
        dense_runs.append(d)
        svd_runs.append(s)
        agree = sum(a == b for a, b in zip(d_tokens, s_tokens, strict=True))
    d_med, s_med = statistics.median(dense_runs), statistics.median(svd_runs)
    log(f"decode tok/s dense {d_med:.2f} {[round(v, 1) for v in dense_runs]}")
    log(f"decode tok/s svd   {s_med:.2f} {[round(v, 1) for v in svd_runs]}")
    print(json.dumps({
        "ppl_dense": round(ppl_dense, 4), "ppl_svd": round(ppl_svd, 4), "ppl_ratio": round(ppl_svd / ppl_dense, 4),
        "bytes_ratio": round(comp.bytes_ratio, 4), "decode_speedup": round(s_med / d_med, 4),
        "dense_tok_s": round(d_med, 3), "svd_tok_s": round(s_med, 3), "svd": args.svd,
        "lowrank_matrices": lowrank, "matrices": len(comp.plans), "greedy_tokens_agreeing": agree,
        "eval_tokens": int(ev.numel()), "decode_tokens": args.tokens, "runs": args.runs,
        "torch_threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
