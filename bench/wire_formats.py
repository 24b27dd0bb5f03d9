"""Error of the lossy wire formats against fp32 on the real SmolLM2, every hop quantized (docs/benchmarks.md).

SmolLM2-135M-Instruct split in 4 shards (the same ShardModel code a node runs), in-process. Each window of
the evaluation text (data/evaluation.txt) is run teacher-forced as one prefill: the client's embeddings are
encoded in the wire format and decoded (what node 0 receives), every shard's output is encoded and decoded
(what the client receives) and re-encoded for the next shard, exactly as the client and nodes do over the
network. Formats that exist on the wire go through the real frame codec (veriswarm/frames.py; q8 with other
outlier counts k than the default 16 through the same codec); the reference variants that are not served
(naive per-tensor int8, a per-frame fixed outlier channel set, per-block scales) are simulated here.

Reported per format, against the same pipeline in fp32: max-abs and mean-abs logit error, greedy top-1
agreement over all teacher-forced positions, mean KL(fp32 || format), perplexity and its change, the frame
size per token relative to fp32, and the largest per-position relative L2 error a single hop's output
rounding adds (what the verifier's tolerance must allow, verifier/tolerance.py).

    python bench/wire_formats.py                 # 2 windows x 256 tokens, ~1 minute on 2 cores
    python bench/wire_formats.py --tokens 1024   # more text

Prints a markdown table and, last, one JSON line with every number.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import torch.nn.functional as F

from veriswarm.frames import DTYPE_NAMES, Q8, decode_tensor, encode_tensor
from veriswarm.quant8 import encode_body, geometry, quantize
from veriswarm.split.calibration import evaluation_windows
from veriswarm.split.modeling import HeadModel, ShardModel
from veriswarm.split.partition import _strip_prefix, plan_layers
from veriswarm.split.sources import config_from_hf, load_hf, resolve_source
from veriswarm.verifier.tolerance import position_errors

RoundTrip = Callable[[torch.Tensor], tuple[torch.Tensor, int]]  # x -> (what the receiver decodes, frame bytes)
CAP = 1 << 30


def wire(dtype: torch.dtype) -> RoundTrip:
    def rt(x: torch.Tensor) -> tuple[torch.Tensor, int]:
        frame = encode_tensor(x, dtype)
        return decode_tensor(frame, max_bytes=CAP).to(torch.float32), len(frame)
    return rt


def q8(k: int) -> RoundTrip:
    """The real q8 frame with k outliers per row (k=0: plain per-row absmax int8), decoded by frames.py."""
    def rt(x: torch.Tensor) -> tuple[torch.Tensor, int]:
        dims_end = 8 + 4 * x.dim()  # the frame header and dims do not depend on k
        frame = encode_tensor(x, Q8)[:dims_end] + encode_body(x, k)
        return decode_tensor(frame, max_bytes=CAP), len(frame)
    return rt


def naive_tensor_int8(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """One absmax scale for the whole tensor (simulated; not served)."""
    scale = x.abs().max().clamp_min(1e-30) / 127
    return torch.round(x / scale).clamp(-127, 127) * scale, x.numel() + 4


def fixed_channels(k: int) -> RoundTrip:
    """The k channels with the largest magnitude anywhere in the frame sent exactly for every row, the rest
    per-row int8 (simulated; not served: its bytes would depend on how a sequence is chunked)."""
    def rt(x: torch.Tensor) -> tuple[torch.Tensor, int]:
        rows, cols = geometry(tuple(x.shape))
        flat = x.reshape(rows, cols)
        chans = flat.abs().amax(dim=0).topk(k).indices
        rest = flat.clone()
        rest[:, chans] = 0
        scales, index, values, q = quantize(rest, 0)
        out = q.float() * scales[:, None]
        out[:, chans] = flat[:, chans]
        return out.reshape(x.shape), rows * (cols + 4 + 4 * k) + 2 * k
    return rt


def blocks(size: int, k: int) -> RoundTrip:
    """k exact outliers per row as in q8, but one bf16 scale per block of `size` channels instead of one
    per row (simulated; the alternative to q8's larger k that was measured and not chosen)."""
    def rt(x: torch.Tensor) -> tuple[torch.Tensor, int]:
        rows, cols = geometry(tuple(x.shape))
        flat = x.reshape(rows, cols)
        index = flat.abs().topk(k, dim=1).indices
        g = flat.scatter(1, index, 0.0).reshape(rows, cols // size, size)
        s = (g.abs().amax(-1, keepdim=True) / 127).to(torch.bfloat16).float()
        q = torch.round(g / torch.where(s > 0, s, torch.ones_like(s))).clamp(-127, 127)
        out = (q * s).reshape(rows, cols).scatter(1, index, flat.gather(1, index))
        return out.reshape(x.shape), rows * (cols + 2 * (cols // size) + 6 * k)
    return rt


FORMATS: dict[str, RoundTrip] = {
    "fp32": wire(torch.float32),
    "fp16": wire(torch.float16),
    "bf16": wire(torch.bfloat16),
    "int8 per-tensor (naive)": naive_tensor_int8,
    "int8 per-row (q8 k=0)": q8(0),
    "q8 k=1": q8(1),
    "q8 k=2": q8(2),
    "q8 k=4": q8(4),
    "q8 k=8": q8(8),
    "**q8 k=16 (chosen)**": q8(16),
    "q8 k=32": q8(32),
    "int8 per-row + 4 fixed channels": fixed_channels(4),
    "int8 per 32-channel block + 4 outliers": blocks(32, 4),
    "int8 per 32-channel block + 8 outliers": blocks(32, 8),
}


@torch.inference_mode()
def run(shards: list[ShardModel], head: HeadModel, ids: torch.Tensor, rt: RoundTrip) -> tuple[torch.Tensor, float, int]:
    """Logits of one window with every hop through `rt`; also the worst per-position relative error a
    single hop's output rounding adds, and the bytes of one frame of this window."""
    x, size = rt(head.embed_tokens(ids))
    worst = 0.0
    for shard in shards:
        y = shard(x)
        x, size = rt(y)
        worst = max(worst, float(position_errors(x, y).max()))
    return head.logits(x)[0].float(), worst, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tok = load_hf(resolve_source(None))
    cfg = config_from_hf(model.config)
    sd = _strip_prefix(model.state_dict())
    del model
    shards = [ShardModel(cfg, a, b, sd) for a, b in plan_layers(cfg.num_hidden_layers, args.shards)]
    head = HeadModel(cfg, sd)
    windows = evaluation_windows(tok, tokens=args.tokens, seq_len=args.seq_len)
    positions = windows.shape[0] * (windows.shape[1] - 1)

    ref = [run(shards, head, w[None], FORMATS["fp32"]) for w in windows]
    fp32_bytes = ref[0][2]
    rows: list[dict[str, object]] = []
    for name, rt in FORMATS.items():
        max_abs = sum_abs = kl = nll = 0.0
        agree, worst_hop, size = 0, 0.0, 0
        for w, (ref_logits, _, _) in zip(windows, ref, strict=True):
            logits, hop, size = run(shards, head, w[None], rt)
            lg, rl = logits[:-1], ref_logits[:-1]  # positions that predict a next token of the window
            diff = (lg - rl).abs()
            max_abs = max(max_abs, float(diff.max()))
            sum_abs += float(diff.mean(dim=-1).sum())
            agree += int((lg.argmax(-1) == rl.argmax(-1)).sum())
            kl += float(F.kl_div(lg.log_softmax(-1), rl.log_softmax(-1), log_target=True, reduction="sum"))
            nll += float(F.cross_entropy(lg, w[1:], reduction="sum"))
            worst_hop = max(worst_hop, hop)
        rows.append({"format": name, "bytes_vs_fp32": size / fp32_bytes, "max_abs_logit": max_abs,
                     "mean_abs_logit": sum_abs / positions, "top1": agree / positions, "kl": kl / positions,
                     "ppl": math.exp(nll / positions), "hop_rel_l2": worst_hop})
        print(f"[{time.perf_counter() - t0:6.1f}s] {name}: done", flush=True)
    base = float(rows[0]["ppl"])  # type: ignore[arg-type]
    print(f"\nSmolLM2-135M-Instruct, {args.shards} shards, {windows.shape[0]} x {windows.shape[1]} tokens of "
          f"data/evaluation.txt teacher-forced ({positions} positions), every hop through the format\n")
    print("| format | bytes vs fp32 | max-abs logit err | mean-abs logit err | top-1 agreement | mean KL | "
          "ppl (Δ) | worst hop rel. L2 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ppl = float(r["ppl"])  # type: ignore[arg-type]
        print(f"| {r['format']} | {r['bytes_vs_fp32']:.3f} | {r['max_abs_logit']:.3g} | {r['mean_abs_logit']:.3g} | "
              f"{100 * float(r['top1']):.2f}% | {float(r['kl']):.2g} | {ppl:.3f} ({100 * (ppl / base - 1):+.2f}%) | "  # type: ignore[arg-type]
              f"{float(r['hop_rel_l2']):.2g} |")  # type: ignore[arg-type]
    print(json.dumps({"model": "SmolLM2-135M-Instruct", "shards": args.shards, "tokens": int(windows.numel()),
                      "positions": positions, "torch": torch.__version__, "wire_names": sorted(DTYPE_NAMES),
                      "rows": rows}))


if __name__ == "__main__":
    main()
