"""How far an honest node's output may be from the verifier's recomputation.

Measured on SmolLM2-135M (4 shards, CPU, torch 2.13): the same inputs run as one causal prefill vs.
chunked through the KV cache, at 1 and 2 threads, differ by at most 1.4e-6 (relative Frobenius per
step) and about 4e-6 per position. An fp16 wire adds the output rounding (~3e-4 relative); bf16 ~2.4e-3.
The q8 wire (quant8.py, 16 exact outliers per row) measured 6.0e-3 at worst (bench/wire_formats.py), and
its rounding is bounded for *any* input: every ordinary channel is off by at most scale/2 = a/254, where
a is the row's 17th-largest magnitude, and the 17 largest already have a norm >= a*sqrt(17), so the
per-position relative error is <= sqrt(H - 16) / (254 * sqrt(17)) = 2.26e-2 for SmolLM2's H = 576. Its
tolerance sits above that bound, so an honest q8 node is never flagged for rounding (the bound grows as
sqrt(H): revisit this constant for models with hidden size above ~1000).
The tolerance is the per-position relative L2 error: an honest margin of ~25x (fp32) above what was
measured; see docs/verification.md for the numbers and the detection power this leaves.
"""

from __future__ import annotations

import torch

from veriswarm.frames import Q8

#: max allowed per-position relative L2 error, by wire dtype of the hop's output frame
TOLERANCE: dict[torch.dtype, float] = {
    torch.float32: 1e-4,
    torch.float16: 2e-3,
    torch.bfloat16: 1.5e-2,
    Q8: 3e-2,
}


def position_errors(claimed: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Relative L2 error of each position ([1, T, H] → [T])."""
    diff = (claimed.to(torch.float32) - reference.to(torch.float32)).norm(dim=-1)[0]
    scale = reference.to(torch.float32).norm(dim=-1)[0].clamp_min(1e-6)
    return diff / scale
