"""Quality/size table of SVD-compressed SmolLM2 for docs/svd.md (a real run; minutes to an hour on a CPU).

For every method and byte budget: compress with the calibration text (data/calibration.txt), then
measure perplexity on the evaluation text (data/evaluation.txt, a different book) through the same
ShardModel code a node runs. "Bytes" = stored bytes of the decoder layers' linear weights
(q, k, v, o, gate, up, down of all layers) as a fraction of the same matrices in fp32; embeddings,
norms and the LM head are the client's and are not compressed.

Reference rows: the dense fp32 model, the dense weights rounded to fp16 (servable: the fp16 path),
and int8 of the dense weights (symmetric per output row, dequantized for evaluation: a reference
point only, nodes do not serve int8).

Writes the markdown table between the markers in docs/svd.md (``--write``), prints it, and prints
every measurement as one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from veriswarm.split.calibration import CalibrationSet, evaluation_windows
from veriswarm.split.evaluation import state_dict_perplexity
from veriswarm.split.partition import _strip_prefix
from veriswarm.split.sources import config_from_hf, load_hf, resolve_source
from veriswarm.split.svd import Compressor, SvdOptions, matrix_names, rank_fraction

BEGIN, END = "<!-- svd-table:begin -->", "<!-- svd-table:end -->"
ROWS = [  # (label, --svd spec, lowest budget computed: fp32 rows below 60% only repeat a collapse)
    ("plain SVD, fp32", "method=plain", 0.6),
    ("ASVD, fp32", "method=asvd", 0.6),
    ("whitened SVD (SVD-LLM), fp32", "method=whiten", 0.6),
    ("best, fp32 factors", "method=best,dtype=fp32", 0.6),
    ("**best** (default: fp16)", "method=best", 0.0),
]


def int8_rows(sd: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """Symmetric per-row int8 of the dense weights, dequantized back to fp32 (reference only)."""
    out = dict(sd)
    for name in names:
        w = sd[f"{name}.weight"]
        scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
        out[f"{name}.weight"] = (torch.round(w / scale).clamp(-127, 127) * scale).contiguous()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", default="1.0,0.9,0.8,0.7,0.6,0.5,0.4,0.3")
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--eval-seq-len", type=int, default=1024)
    ap.add_argument("--calib-tokens", type=int, default=16384)
    ap.add_argument("--rows", default="", help="comma-separated row indexes (default: all)")
    ap.add_argument("--write", action="store_true", help="rewrite the table in docs/svd.md")
    args = ap.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)

    source = resolve_source(None)
    model, tok = load_hf(source)
    cfg = config_from_hf(model.config)
    sd = _strip_prefix(model.state_dict())
    del model
    calib = CalibrationSet.build(tok, tokens=args.calib_tokens, seq_len=512, val_tokens=8192)
    ev = evaluation_windows(tok, tokens=args.eval_tokens, seq_len=args.eval_seq_len)
    names = matrix_names(cfg)
    results: list[dict[str, object]] = []
    cache: dict[tuple[object, ...], float] = {}

    def ppl(key: tuple[object, ...], state: dict[str, torch.Tensor]) -> float:
        if key not in cache:
            cache[key] = state_dict_perplexity(cfg, state, ev)
        return cache[key]

    dense = ppl(("dense",), sd)
    log(f"dense fp32: {dense:.3f}")
    half = ppl(("fp16",), {**sd, **{f"{n}.weight": sd[f"{n}.weight"].half() for n in names}})
    log(f"dense fp16: {half:.3f}")
    int8 = ppl(("int8",), int8_rows(sd, names))
    log(f"dense int8 (reference): {int8:.3f}")
    refs = [("dense fp32 (reference)", 1.0, dense), ("dense fp16", 0.5, half), ("dense int8, per-row scales "
                                                                               "(reference, not served)", 0.25, int8)]

    rows = [ROWS[int(i)] for i in args.rows.split(",")] if args.rows else ROWS
    done: list[Compressor] = []
    table: dict[str, dict[float, tuple[float, float, int]]] = {}
    for label, spec, lowest in rows:
        comp = Compressor(cfg, sd, calib, SvdOptions.parse(f"{spec},bytes=1.0,calib-tokens={args.calib_tokens}"))
        for other in done:  # reuse what does not depend on the method: statistics, whitened SVDs, Fisher weights
            comp._stats = comp._stats or other._stats
            if {comp.options.method, other.options.method} <= {"whiten", "best"}:
                comp._facs = comp._facs or other._facs
                comp._weights = comp._weights or other._weights
        done.append(comp)
        table[label] = {}
        for b in budgets:
            if b < lowest - 1e-9:
                continue
            cm = comp.compress(b)
            key = (spec, tuple(sorted((n, p.rank, p.dtype) for n, p in cm.plans.items())))
            value = ppl(key, cm.apply(sd))
            low = sum(p.rank is not None for p in cm.plans.values())
            table[label][b] = (value, cm.bytes_ratio, low)
            results.append({"row": label, "spec": spec, "budget": b, "ppl": round(value, 4),
                            "bytes_ratio": round(cm.bytes_ratio, 4), "lowrank_matrices": low,
                            "mean_rank_fraction": round(rank_fraction(cm.plans), 4)})
            log(f"{label:40s} budget {b:.2f}: ppl {value:10.3f}  bytes {cm.bytes_ratio:.3f}  low-rank {low}/"
                f"{len(cm.plans)}")

    lines = [f"| method | {' | '.join(f'{b:.0%}' for b in budgets)} |", "|---|" + "---|" * len(budgets)]
    for label, cells in table.items():
        out = []
        for b in budgets:
            if b not in cells:
                out.append("–")
                continue
            value, ratio, low = cells[b]
            shown = f"{value:,.1f}" if value < 1e4 else f"{value:.1e}"
            out.append(f"{shown} ({ratio:.2f}, {low})")
        lines.append(f"| {label} | {' | '.join(out)} |")
    lines.append("")
    lines.append("| reference | bytes | perplexity |")
    lines.append("|---|---|---|")
    for label, ratio, value in refs:
        lines.append(f"| {label} | {ratio:.2f} | {value:.2f} |")
    meta = (f"SmolLM2-135M-Instruct; perplexity on {ev.numel()} tokens of data/evaluation.txt "
            f"({ev.shape[0]} windows of {ev.shape[1]}); calibration: {calib.stats.numel()} tokens of "
            f"data/calibration.txt. Cell: perplexity (bytes actually used as a fraction of fp32 dense, number "
            f"of the {len(names)} matrices stored low-rank). Generated by `python bench/svd_table.py --write` "
            f"in {time.perf_counter() - t0:.0f} s, torch {torch.__version__}, {torch.get_num_threads()} threads.")
    block = "\n".join([meta, "", *lines])
    print(block)
    if args.write:
        doc = Path(__file__).resolve().parent.parent / "docs" / "svd.md"
        text = doc.read_text()
        start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
        doc.write_text(text[:start] + "\n" + block + "\n" + text[end:])
        log(f"table written to {doc}")
    print(json.dumps({"dense_ppl": round(dense, 4), "fp16_ppl": round(half, 4), "int8_ppl": round(int8, 4),
                      "eval_tokens": int(ev.numel()), "cells": results}))


if __name__ == "__main__":
    main()
