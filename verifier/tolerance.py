"""How far an honest node's output may be from the verifier's recomputation.

Measured on SmolLM2-135M (4 shards, CPU, torch 2.13): the same inputs run as one causal prefill vs.
chunked through the KV cache, at 1 and 2 threads, differ by at most 1.4e-6 (relative Frobenius per
step) and about 4e-6 per position. An fp16 wire adds the output rounding (~3e-4 relative); bf16 ~2.4e-3.
The tolerance is the per-position relative L2 error: an honest margin of ~25x (fp32) above what was
measured; see docs/verification.md for the numbers and the detection power this leaves.
"""

from __future__ import annotations

import torch

#: max allowed per-position relative L2 error, by wire dtype of the hop's output frame
TOLERANCE: dict[torch.dtype, float] = {
    torch.float32: 1e-4,
    torch.float16: 2e-3,
    torch.bfloat16: 1.5e-2,
}


def position_errors(claimed: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Relative L2 error of each position ([1, T, H] → [T])."""
    diff = (claimed.to(torch.float32) - reference.to(torch.float32)).norm(dim=-1)[0]
    scale = reference.to(torch.float32).norm(dim=-1)[0].clamp_min(1e-6)
    return diff / scale
