"""Linear layers whose stored weights are fp16: dense, or low-rank factors y = U (V x).

Shard artifacts may hold fp16 tensors (``prefix.weight`` or ``prefix.u``/``prefix.v``). The node keeps
them in fp16 and multiplies with fp32 activations and fp32 accumulation, never materialising an fp32
copy of the weights: on x86 this is FBGEMM's packed fp16 GEMM (``quantized::linear_dynamic_fp16``),
which reads half the bytes of an fp32 matrix. Where that kernel is missing (non-x86 builds) the fp16
weights are widened to fp32 once at load and the plain fp32 path runs: same values, more memory.

Activations are never rounded: only the stored weights are fp16, so a node and a verifier that run
this code on the same artifact agree to fp32 rounding.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

HALF = torch.float16


@functools.cache
def fbgemm_fp16_available() -> bool:
    """Whether this torch build has FBGEMM's packed fp16 linear (x86 CPU builds do)."""
    try:
        w = torch.zeros(8, 8)
        packed = torch.ops.quantized.linear_prepack_fp16(w, None)
        torch.ops.quantized.linear_dynamic_fp16(torch.zeros(1, 8), packed)
        return True
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


class _HalfMatmul(nn.Module):
    """x @ Wᵀ (+ b) for an fp16 W [out, in] with fp32 x; W is stored once, as packed fp16 when possible."""

    def __init__(self, w: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        if w.dtype != HALF:
            raise TypeError(f"expected an fp16 weight, got {w.dtype}")
        self.out_features, self.in_features = int(w.shape[0]), int(w.shape[1])
        self.packed: torch.Tensor | None = None
        wide = w.to(torch.float32)  # exact: every fp16 value is an fp32 value
        b = None if bias is None else bias.to(torch.float32)
        if fbgemm_fp16_available() and w.device.type == "cpu":
            # The packed blob is opaque; it is the only copy of the weights the module keeps.
            self.packed = torch.ops.quantized.linear_prepack_fp16(wide, b)
            self.weight = None
            self.bias = None
        else:
            self.weight = nn.Parameter(wide, requires_grad=False)
            self.bias = None if b is None else nn.Parameter(b, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None and x.dtype == torch.float32 and x.device.type == "cpu":
            return torch.ops.quantized.linear_dynamic_fp16(x, self.packed)
        if self.packed is not None:
            w, b = torch.ops.quantized.linear_unpack_fp16(self.packed)
            return F.linear(x, w.to(x.dtype), None if b is None else b.to(x.dtype))
        assert self.weight is not None
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


class HalfLinear(nn.Module):
    """A dense linear stored in fp16: y = W x + b."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.mm = _HalfMatmul(weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mm(x)


class HalfLowRankLinear(nn.Module):
    """y = U (V x) + b with fp16 U [out, r] and V [r, in]; the dense matrix is never rebuilt."""

    def __init__(self, u: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        if u.shape[1] != v.shape[0]:
            raise ValueError(f"factor shapes do not chain: u {tuple(u.shape)}, v {tuple(v.shape)}")
        self.v = _HalfMatmul(v, None)
        self.u = _HalfMatmul(u, bias)

    @property
    def rank(self) -> int:
        return self.v.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.u(self.v(x))


def half_linear(sd: Mapping[str, torch.Tensor], prefix: str) -> nn.Module | None:
    """The fp16 module for ``prefix`` if its stored weights are fp16, else None (the fp32 paths apply)."""
    bias = sd.get(f"{prefix}.bias")
    w = sd.get(f"{prefix}.weight")
    if w is not None:
        return HalfLinear(w, bias) if w.dtype == HALF else None
    u, v = sd.get(f"{prefix}.u"), sd.get(f"{prefix}.v")
    if u is not None and v is not None and (u.dtype == HALF or v.dtype == HALF):
        return HalfLowRankLinear(u.to(HALF), v.to(HALF), bias)
    return None
