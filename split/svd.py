"""SVD-compressed shards: low-rank factors y = U (V x) for the decoder's linear layers.

Methods (``--svd method=NAME,...``):

``plain``   truncated SVD of each weight W (the baseline; no data).
``asvd``    ASVD (Yuan et al., 2023, arXiv:2312.05821): SVD of W·diag(s), s = mean|x|^alpha from
            calibration activations, then V ← V·diag(s)⁻¹.
``whiten``  SVD-LLM (Wang et al., ICLR 2025, arXiv:2403.07378): truncation-aware data whitening,
            SVD of W·L with L Lᵀ = chol(XᵀX) from calibration activations, V ← V·L⁻¹, so every dropped
            singular value is exactly the output error it causes on the calibration data.
``best``    (the default) this module's method, built on SVD-LLM:
            1. global rank allocation by measured sensitivity: each whitened singular component i of
               each matrix is priced by its effect on the calibration loss under a Kronecker-factored
               Fisher approximation, ΔL_i ≈ σ_i² · u_iᵀ G u_i with G = Σ_t g_t g_tᵀ the gradient
               covariance at the matrix's output (FWSVD, Hsu et al., ICLR 2022, arXiv:2207.00112, and
               K-FAC, Martens & Grosse 2015); a Lagrangian sweep picks, per matrix, a rank or "dense"
               to minimise Σ ΔL under the byte budget;
            2. sequential closed-form correction (as SVD-LLM v2, arXiv:2503.12340, and layer-wise
               correction in the GPTQ/OBC line): matrices are compressed in forward order; each one's
               factors solve min ‖W X − W' X'‖ over rank-r W', with X the original model's inputs and
               X' the inputs of the already-compressed model, in closed form:
               W' = [W·(XᵀX')·L'⁻ᵀ]_r · L'⁻¹, L'L'ᵀ = X'ᵀX';
            3. fp16 storage of factors and of matrices kept dense (half the bytes: about twice the
               rank at the same budget), multiplied by the node with fp32 activations.

Budget: ``bytes=F`` (total stored bytes of the decoder-layer linear weights ≤ F × their fp32 dense
bytes) or ``max-ppl-increase=P%`` (the fewest bytes whose perplexity on held-out *calibration*
windows is within P% of the dense model's; bisection over F). Embeddings, norms, the LM head and
biases are not compressed and not counted. A matrix is stored dense whenever its rank would not save
bytes (r·(m+n) ≥ m·n).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from veriswarm.errors import ConfigError
from veriswarm.manifest import ModelConfig

from .calibration import CalibrationSet
from .evaluation import state_dict_perplexity
from .modeling import DecoderLayer, HeadModel, Rotary, build_linear

Progress = Callable[[str, int, int], None]

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
#: Which captured activation is each linear's input: attn (after input norm), o (attention output),
#: mlp (after post-attention norm), down (silu(gate)·up).
INPUT_OF = {"self_attn.q_proj": "attn", "self_attn.k_proj": "attn", "self_attn.v_proj": "attn",
            "self_attn.o_proj": "o", "mlp.gate_proj": "mlp", "mlp.up_proj": "mlp", "mlp.down_proj": "down"}
GROUPS = ("attn", "o", "mlp", "down")
METHODS = ("plain", "asvd", "whiten", "best")
DTYPES = {"float32": torch.float32, "float16": torch.float16}
_DTYPE_ALIASES = {"fp32": "float32", "float32": "float32", "f32": "float32",
                  "fp16": "float16", "float16": "float16", "f16": "float16", "half": "float16"}
_DENSE_BYTES_PER_PARAM = 4  # the reference: fp32 dense weights


# --------------------------------------------------------------------------------------------- options

@dataclass(frozen=True)
class SvdOptions:
    """What to compress and to which budget; parsed from ``--svd key=value,...``."""

    method: str = "best"
    bytes: float | None = None  # target fraction of the dense fp32 bytes
    max_ppl_increase: float | None = None  # fraction (0.05 = 5%) over the dense calibration perplexity
    dtype: str | None = None  # storage dtype of factors and dense matrices; None: method default
    allocation: str | None = None  # "uniform" or "fisher"; None: fisher for best, uniform otherwise
    sequential: bool | None = None  # closed-form sequential correction; None: on for best only
    calib_tokens: int = 16384  # calibration tokens for activation statistics
    seq_len: int = 512
    fisher_tokens: int = 8192  # of those, how many also feed the gradient (Fisher) pass
    val_tokens: int = 8192  # held-out calibration tokens for max-ppl-increase searches
    damp: float = 0.01  # ridge added to XᵀX, relative to its mean diagonal
    alpha: float = 0.5  # ASVD exponent
    min_rank: int = 1
    residual: bool | None = None  # sequential: o/down also absorb the residual-stream error; None: on for best

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"--svd method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if (self.bytes is None) == (self.max_ppl_increase is None):
            raise ConfigError("--svd needs exactly one budget: bytes=FRACTION or max-ppl-increase=PERCENT")
        if self.bytes is not None and not 0.0 < self.bytes <= 1.0:
            raise ConfigError(f"--svd bytes must be in (0, 1] (a fraction of the dense bytes), got {self.bytes}")
        if self.max_ppl_increase is not None and not self.max_ppl_increase > 0:
            raise ConfigError(f"--svd max-ppl-increase must be positive, got {self.max_ppl_increase}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ConfigError(f"--svd dtype must be fp32 or fp16, got {self.dtype!r}")
        if self.allocation not in (None, "uniform", "fisher"):
            raise ConfigError(f"--svd allocation must be uniform or fisher, got {self.allocation!r}")
        for name in ("calib_tokens", "seq_len", "fisher_tokens", "val_tokens", "min_rank"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--svd {name.replace('_', '-')} must be positive")

    @property
    def storage_dtype(self) -> str:
        return self.dtype or ("float16" if self.method == "best" else "float32")

    @property
    def allocation_kind(self) -> str:
        return self.allocation or ("fisher" if self.method == "best" else "uniform")

    @property
    def is_sequential(self) -> bool:
        return self.method == "best" if self.sequential is None else self.sequential

    @property
    def absorbs_residual(self) -> bool:
        return self.is_sequential and (self.method == "best" if self.residual is None else self.residual)

    @property
    def needs_stats(self) -> bool:
        return self.method != "plain" or self.is_sequential or self.allocation_kind == "fisher"

    @classmethod
    def parse(cls, text: str) -> SvdOptions:
        """``bytes=0.8``, ``max-ppl-increase=5%``, ``method=whiten,bytes=0.8``, ``dtype=fp16``, ..."""
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, raw = part.partition("=")
            key = key.strip().lower().replace("-", "_")
            raw = raw.strip()
            if not sep or key not in known:
                raise ConfigError(f"--svd: cannot read {part!r} (expected key=value with key one of "
                                  f"{', '.join(sorted(k.replace('_', '-') for k in known))})")
            values[key] = _parse_value(key, raw)
        return cls(**values)

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "dtype": self.storage_dtype, "allocation": self.allocation_kind,
                "sequential": self.is_sequential, "residual": self.absorbs_residual, "bytes": self.bytes,
                "max_ppl_increase": self.max_ppl_increase,
                "calib_tokens": self.calib_tokens, "seq_len": self.seq_len, "damp": self.damp}


def _parse_value(key: str, raw: str) -> Any:
    try:
        if key in ("bytes", "max_ppl_increase"):
            return float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
        if key in ("damp", "alpha"):
            return float(raw)
        if key in ("calib_tokens", "seq_len", "fisher_tokens", "val_tokens", "min_rank"):
            return int(raw)
        if key in ("sequential", "residual"):
            if raw.lower() not in ("1", "0", "on", "off", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "on", "true", "yes")
        if key == "dtype":
            if raw.lower() not in _DTYPE_ALIASES:
                raise ConfigError(f"--svd dtype must be fp32 or fp16, got {raw!r}")
            return _DTYPE_ALIASES[raw.lower()]
        return raw.lower()
    except ValueError:
        raise ConfigError(f"--svd {key.replace('_', '-')}={raw!r} is not a valid value") from None


# ------------------------------------------------------------------------------------------- the plan

@dataclass(frozen=True)
class MatrixPlan:
    """How one weight matrix [out, in] is stored: dense (rank None) or rank-r factors, in ``dtype``."""

    out_features: int
    in_features: int
    rank: int | None
    dtype: str

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=DTYPES[self.dtype]).element_size()

    @property
    def params(self) -> int:
        m, n = self.out_features, self.in_features
        return m * n if self.rank is None else self.rank * (m + n)

    @property
    def bytes(self) -> int:
        return self.params * self.itemsize

    @property
    def dense_bytes(self) -> int:
        return self.out_features * self.in_features * _DENSE_BYTES_PER_PARAM

    def manifest_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"format": "dense" if self.rank is None else "lowrank", "dtype": self.dtype,
                                 "shape": [self.out_features, self.in_features]}
        if self.rank is not None:
            entry["rank"] = self.rank
        return entry


def matrix_names(cfg: ModelConfig) -> list[str]:
    return [f"layers.{i}.{lin}" for i in range(cfg.num_hidden_layers) for lin in LINEARS]


def dense_bytes(shapes: Mapping[str, tuple[int, int]]) -> int:
    return sum(m * n for m, n in shapes.values()) * _DENSE_BYTES_PER_PARAM


def plan_bytes(plans: Mapping[str, MatrixPlan]) -> int:
    return sum(p.bytes for p in plans.values())


def uniform_plan(shapes: Mapping[str, tuple[int, int]], dtype: str, target_bytes: float,
                 min_rank: int = 1) -> dict[str, MatrixPlan]:
    """Every matrix keeps the same fraction of its dense bytes (the SVD-LLM/ASVD protocol), largest fitting."""
    item = torch.empty((), dtype=DTYPES[dtype]).element_size()

    def build(rho: float) -> dict[str, MatrixPlan]:
        out = {}
        for name, (m, n) in shapes.items():
            budget = rho * m * n * _DENSE_BYTES_PER_PARAM
            rank: int | None
            if budget >= m * n * item:
                rank = None
            else:
                rank = min(max(min_rank, int(budget // ((m + n) * item))), min(m, n))
                if rank * (m + n) >= m * n:
                    rank = None
            out[name] = MatrixPlan(m, n, rank, dtype)
        return out

    if plan_bytes(build(1.0)) <= target_bytes:
        return build(1.0)
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if plan_bytes(build(mid)) <= target_bytes:
            lo = mid
        else:
            hi = mid
    plans = build(lo)
    if plan_bytes(plans) > target_bytes:
        raise ConfigError(f"--svd bytes: no plan fits {target_bytes:.0f} bytes (minimum rank {min_rank})")
    return plans


def lagrangian_plan(shapes: Mapping[str, tuple[int, int]], weights: Mapping[str, torch.Tensor], dtype: str,
                    target_bytes: float, min_rank: int = 1) -> dict[str, MatrixPlan]:
    """Ranks minimising Σ_j Σ_{i≥r_j} weights[j][i] within the byte budget (a Lagrangian sweep).

    ``weights[j]`` are the estimated loss increases of dropping each singular component of matrix j,
    in singular-value order. Each matrix independently picks the rank (or "dense", zero loss, m·n
    entries) minimising loss + λ·bytes; λ is bisected to the smallest value whose plan fits.
    """
    item = torch.empty((), dtype=DTYPES[dtype]).element_size()
    tables = {}
    for name, (m, n) in shapes.items():
        w = weights[name].double().clamp_min(0)
        k = w.numel()
        tail = torch.cat([torch.flip(torch.cumsum(torch.flip(w, [0]), 0), [0]), w.new_zeros(1)])  # tail[r]
        r_max = min(k, (m * n - 1) // (m + n))  # largest rank that is cheaper than dense
        ranks = torch.arange(min(min_rank, r_max), r_max + 1, dtype=torch.float64) if r_max >= 1 else None
        tables[name] = (m, n, ranks, None if ranks is None else tail[ranks.long()])

    def build(lam: float) -> dict[str, MatrixPlan]:
        out = {}
        for name, (m, n, ranks, loss) in tables.items():
            rank: int | None = None
            if ranks is not None and loss is not None:
                obj = loss + lam * ranks * (m + n) * item
                best = int(torch.argmin(obj))
                if float(obj[best]) < lam * m * n * item:
                    rank = int(ranks[best])
            out[name] = MatrixPlan(m, n, rank, dtype)
        return out

    if plan_bytes(build(0.0)) <= target_bytes:
        return build(0.0)
    total = float(sum(float(t[3].max()) if t[3] is not None else 0.0 for t in tables.values())) or 1.0
    lo, hi = 0.0, total  # at λ = total every matrix takes its cheapest option
    while plan_bytes(build(hi)) > target_bytes:
        hi *= 4
        if hi > total * 1e12:
            raise ConfigError(f"--svd bytes: no plan fits {target_bytes:.0f} bytes (minimum rank {min_rank})")
    for _ in range(100):
        mid = (lo + hi) / 2
        if plan_bytes(build(mid)) <= target_bytes:
            hi = mid
        else:
            lo = mid
    return build(hi)


# --------------------------------------------------------------------------------- activation passes

class _Stop(Exception):
    pass


def _group_modules(layer: DecoderLayer) -> dict[str, nn.Module]:
    return {"attn": layer.self_attn.q_proj, "o": layer.self_attn.o_proj, "mlp": layer.mlp.gate_proj,
            "down": layer.mlp.down_proj, "h": layer.post_attention_layernorm}


@torch.no_grad()
def _run_layer(layer: DecoderLayer, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
               capture: tuple[str, ...] = (), stop_at: str | None = None,
               batch: int = 8) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Run a layer over windows x [W, T, H]; return the captured inputs [W·T, n] and the output.

    With ``stop_at`` the layer stops once that group's input is seen (no output is returned).
    """
    mods = _group_modules(layer)
    caps: dict[str, list[torch.Tensor]] = {k: [] for k in capture}
    handles = []
    for key in set(capture) | ({stop_at} if stop_at else set()):
        def hook(_mod: nn.Module, args: tuple[Any, ...], key: str = key) -> None:
            if key in caps:
                caps[key].append(args[0].reshape(-1, args[0].shape[-1]).clone())
            if key == stop_at:
                raise _Stop
        handles.append(mods[key].register_forward_pre_hook(hook))
    outs = []
    cos, sin = rope
    try:
        for b in range(0, x.shape[0], batch):
            try:
                outs.append(layer(x[b:b + batch], cos, sin, 0, None, 0))
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    out = torch.cat(outs) if stop_at is None else None
    return {k: torch.cat(v) for k, v in caps.items()}, out


def _gram(a: torch.Tensor, b: torch.Tensor | None = None, chunk: int = 8192) -> torch.Tensor:
    """aᵀb (b = a by default) accumulated in float64 over row chunks."""
    out = torch.zeros(a.shape[1], (a if b is None else b).shape[1], dtype=torch.float64)
    for i in range(0, a.shape[0], chunk):
        ai = a[i:i + chunk]
        bi = ai if b is None else b[i:i + chunk]
        out += (ai.T @ bi).double()
    return out


@dataclass
class _Stats:
    gram: torch.Tensor  # XᵀX, float64 [n, n]
    absmean: torch.Tensor  # mean |x| per input channel [n]


def _embed(sd: Mapping[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    return F.embedding(ids, sd["embed_tokens.weight"])


def _rope(cfg: ModelConfig, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    return Rotary(cfg)(torch.arange(seq_len), torch.float32)


def collect_stats(cfg: ModelConfig, sd: Mapping[str, torch.Tensor], ids: torch.Tensor,
                  progress: Progress | None = None) -> dict[tuple[int, str], _Stats]:
    """Input statistics of every linear layer of the original model over calibration windows ids [W, T]."""
    x = _embed(sd, ids)
    rope = _rope(cfg, ids.shape[1])
    stats = {}
    for i in range(cfg.num_hidden_layers):
        if progress:
            progress(f"calibration statistics (layer {i})", i, cfg.num_hidden_layers)
        caps, out = _run_layer(DecoderLayer(cfg, sd, i), x, rope, capture=GROUPS)
        assert out is not None
        for g, a in caps.items():
            stats[(i, g)] = _Stats(_gram(a), a.abs().mean(0).double())
        x = out
    return stats


def collect_fisher(cfg: ModelConfig, sd: Mapping[str, torch.Tensor], ids: torch.Tensor, batch: int = 4,
                   progress: Progress | None = None) -> dict[str, torch.Tensor]:
    """G = Σ_t g_t g_tᵀ (float64 [m, m]) of the calibration loss gradient at every linear layer's output."""
    layers = [DecoderLayer(cfg, sd, i) for i in range(cfg.num_hidden_layers)]
    head = HeadModel(cfg, sd)
    rope = _rope(cfg, ids.shape[1])
    acc: dict[str, torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(layers):
        for lin in LINEARS:
            name = f"layers.{i}.{lin}"
            mod = layer.get_submodule(lin)

            def fwd(_m: nn.Module, _args: tuple[Any, ...], out: torch.Tensor, name: str = name) -> None:
                def grad_hook(g: torch.Tensor) -> None:
                    g2 = g.reshape(-1, g.shape[-1])
                    val = (g2.T @ g2).double()
                    acc[name] = acc[name] + val if name in acc else val
                if out.requires_grad:
                    out.register_hook(grad_hook)
            handles.append(mod.register_forward_hook(fwd))
    try:
        n = ids.shape[0]
        for b in range(0, n, batch):
            if progress:
                progress("calibration gradients", b, n)
            chunk = ids[b:b + batch]
            with torch.enable_grad():
                x = _embed(sd, chunk).clone().requires_grad_(True)
                cos, sin = rope
                for layer in layers:
                    x = layer(x, cos, sin, 0, None, 0)
                logits = F.linear(head.norm(x), head.lm_head)
                loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1),
                                       reduction="sum")
                loss.backward()
    finally:
        for h in handles:
            h.remove()
    return acc


# ------------------------------------------------------------------------------------ factorizations

@dataclass
class Factorization:
    """W ≈ U_r diag(S_r) R_r for every r, from one SVD: plain (R = Vᵀ), ASVD, or whitened (R = Vᵀ L⁻¹)."""

    u: torch.Tensor  # [m, k]
    s: torch.Tensor  # [k]
    right: torch.Tensor  # [k, n]

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        root = self.s[:rank].clamp_min(0).sqrt()
        return (self.u[:, :rank] * root).float().contiguous(), (root[:, None] * self.right[:rank]).float().contiguous()


def _chol(gram: torch.Tensor, damp: float) -> tuple[torch.Tensor, float]:
    """Cholesky factor L of gram + δI and the δ used (damp × mean diagonal, raised until it factors)."""
    n = gram.shape[0]
    mean_diag = float(gram.diagonal().mean()) or 1.0
    eye = torch.eye(n, dtype=torch.float64)
    for extra in (1.0, 10.0, 100.0, 1000.0):
        delta = damp * extra * mean_diag
        chol, info = torch.linalg.cholesky_ex(gram + delta * eye)
        if int(info) == 0:
            return chol, delta
    raise ConfigError("calibration statistics are singular: use more calibration tokens")


def _svd(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(t.double(), full_matrices=False)
    return u, s, vh


def factorize_plain(w: torch.Tensor) -> Factorization:
    u, s, vh = _svd(w)
    return Factorization(u, s, vh)


def factorize_asvd(w: torch.Tensor, absmean: torch.Tensor, alpha: float) -> Factorization:
    scale = absmean.double().clamp_min(1e-6) ** alpha
    u, s, vh = _svd(w.double() * scale[None, :])
    return Factorization(u, s, vh / scale[None, :])


def factorize_whitened(w: torch.Tensor, gram: torch.Tensor, damp: float) -> Factorization:
    chol, _ = _chol(gram, damp)
    u, s, vh = _svd(w.double() @ chol)
    right = torch.linalg.solve_triangular(chol, vh, upper=False, left=False)  # Vᵀ L⁻¹
    return Factorization(u, s, right)


def factorize_corrected(w: torch.Tensor, cross: torch.Tensor, gram_c: torch.Tensor, damp: float) -> Factorization:
    """Rank-r minimisers of ‖Y − W' X'‖² + δ‖W' − W‖² given cross = YᵀX' and gram_c = X'ᵀX'.

    With Y = W X (the original outputs) and X' the inputs of the already-compressed model this is
    the sequential correction; the δ term pulls toward W (so with X' = X it is exactly SVD-LLM's
    whitened SVD). Closed form: SVD of (YᵀX' + δW)·L⁻ᵀ, R = Vᵀ L⁻¹, L Lᵀ = X'ᵀX' + δI.
    """
    chol, delta = _chol(gram_c, damp)
    rhs = cross + delta * w.double()
    target = torch.linalg.solve_triangular(chol, rhs.T, upper=False).T  # (YᵀX' + δW) L⁻ᵀ
    u, s, vh = _svd(target)
    right = torch.linalg.solve_triangular(chol, vh, upper=False, left=False)
    return Factorization(u, s, right)


# -------------------------------------------------------------------------------------- compression

@dataclass
class CompressedModel:
    """Replacement tensors for the decoder-layer linear weights, with the plan they follow."""

    options: SvdOptions
    plans: dict[str, MatrixPlan]
    tensors: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def format(self) -> str:
        return f"svd-{self.options.method}"

    @property
    def bytes(self) -> int:
        return plan_bytes(self.plans)

    @property
    def dense_bytes(self) -> int:
        return sum(p.dense_bytes for p in self.plans.values())

    @property
    def bytes_ratio(self) -> float:
        return self.bytes / self.dense_bytes

    def apply(self, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``sd`` (veriswarm names) with every planned matrix's weight replaced by the stored tensors."""
        out = {k: v for k, v in sd.items() if not (k.endswith(".weight") and k[:-len(".weight")] in self.plans)}
        out.update(self.tensors)
        return out

    def matrices(self, layer_start: int, layer_end: int) -> dict[str, dict[str, Any]]:
        """Manifest entries (dense or rank r, dtype, shape) for the matrices of layers [start, end)."""
        out = {}
        for name, plan in self.plans.items():
            if layer_start <= int(name.split(".")[1]) < layer_end:
                out[name] = plan.manifest_entry()
        return out

    def describe(self) -> dict[str, Any]:
        ranks = [p.rank for p in self.plans.values() if p.rank is not None]
        return {**self.options.describe(), "bytes_ratio": round(self.bytes_ratio, 6),
                "lowrank_matrices": len(ranks), "dense_matrices": len(self.plans) - len(ranks),
                **{k: v for k, v in self.info.items() if k in ("calibration_sha256",)}}


def _store(plan: MatrixPlan, name: str, w: torch.Tensor | None,
           fac: Factorization | None) -> dict[str, torch.Tensor]:
    dt = DTYPES[plan.dtype]
    if plan.rank is None:
        assert w is not None
        return {f"{name}.weight": w.to(dt).contiguous()}
    assert fac is not None
    u, v = fac.factors(plan.rank)
    if not (torch.isfinite(u).all() and torch.isfinite(v).all()):
        raise ConfigError(f"{name}: non-finite factors")
    if dt == torch.float16 and max(float(u.abs().max()), float(v.abs().max())) > 6.0e4:
        raise ConfigError(f"{name}: factors overflow fp16; use dtype=fp32")
    return {f"{name}.u": u.to(dt).contiguous(), f"{name}.v": v.to(dt).contiguous()}


def shapes_of(cfg: ModelConfig, sd: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    return {name: (int(sd[f"{name}.weight"].shape[0]), int(sd[f"{name}.weight"].shape[1]))
            for name in matrix_names(cfg)}


class Compressor:
    """Holds the model, the calibration data and every reusable intermediate; compresses to any budget."""

    def __init__(self, cfg: ModelConfig, sd: Mapping[str, torch.Tensor], calib: CalibrationSet | None,
                 options: SvdOptions, progress: Progress | None = None) -> None:
        self.cfg, self.sd, self.calib, self.options = cfg, sd, calib, options
        self.progress = progress or (lambda what, done, total: None)
        self.shapes = shapes_of(cfg, sd)
        self._stats: dict[tuple[int, str], _Stats] | None = None
        self._facs: dict[str, Factorization] = {}
        self._weights: dict[str, torch.Tensor] | None = None
        self._cache: dict[tuple[tuple[str, int | None], ...], CompressedModel] = {}
        self._dense_val_ppl: float | None = None
        if options.needs_stats and calib is None:
            raise ConfigError(f"--svd method={options.method} needs calibration text")

    # ---- reusable intermediates
    def stats(self) -> dict[tuple[int, str], _Stats]:
        if self._stats is None:
            assert self.calib is not None
            self._stats = collect_stats(self.cfg, self.sd, self.calib.stats, self.progress)
        return self._stats

    def factorization(self, name: str) -> Factorization:
        """The non-sequential factorization of one matrix under this method (cached)."""
        fac = self._facs.get(name)
        if fac is None:
            w = self.sd[f"{name}.weight"]
            layer, lin = int(name.split(".")[1]), name.split(".", 2)[2]
            method = self.options.method
            if method == "plain":
                fac = factorize_plain(w)
            else:
                st = self.stats()[(layer, INPUT_OF[lin])]
                if method == "asvd":
                    fac = factorize_asvd(w, st.absmean, self.options.alpha)
                else:
                    fac = factorize_whitened(w, st.gram, self.options.damp)
            self._facs[name] = fac
        return fac

    def loss_weights(self) -> dict[str, torch.Tensor]:
        """Estimated calibration-loss increase of dropping each singular component (Fisher-weighted)."""
        if self._weights is None:
            assert self.calib is not None
            n_fisher = max(1, min(self.calib.stats.shape[0], self.options.fisher_tokens // self.calib.stats.shape[1]))
            grads = collect_fisher(self.cfg, self.sd, self.calib.stats[:n_fisher], progress=self.progress)
            scale = self.calib.stats.shape[0] / n_fisher  # G over fewer windows than XᵀX: same units
            weights = {}
            for name in self.shapes:
                fac = self.factorization(name)
                g = grads[name] * scale
                weights[name] = fac.s ** 2 * ((g @ fac.u) * fac.u).sum(0) / (self.calib.stats.numel())
            self._weights = weights
        return self._weights

    # ---- planning
    def plan(self, fraction: float) -> dict[str, MatrixPlan]:
        target = fraction * dense_bytes(self.shapes)
        dtype, opts = self.options.storage_dtype, self.options
        dense = {n: MatrixPlan(m, k, None, dtype) for n, (m, k) in self.shapes.items()}
        if plan_bytes(dense) <= target:  # every matrix fits dense in the storage dtype: nothing to search
            return dense
        if opts.allocation_kind == "uniform":
            return uniform_plan(self.shapes, dtype, target, opts.min_rank)
        for i, name in enumerate(self.shapes):
            if name not in self._facs:
                self.progress("factorizing", i, len(self.shapes))
                self.factorization(name)
        return lagrangian_plan(self.shapes, self.loss_weights(), dtype, target, opts.min_rank)

    # ---- compression
    def compress(self, fraction: float) -> CompressedModel:
        plans = self.plan(fraction)
        key = tuple((n, p.rank) for n, p in sorted(plans.items()))
        if key in self._cache:
            return self._cache[key]
        if self.options.is_sequential and any(p.rank is not None for p in plans.values()):
            tensors = self._sequential(plans)
        else:
            tensors = {}
            for i, (name, plan) in enumerate(plans.items()):
                self.progress("factorizing", i, len(plans))
                fac = None if plan.rank is None else self.factorization(name)
                tensors.update(_store(plan, name, self.sd[f"{name}.weight"], fac))
        info = {"calibration_sha256": self.calib.sha256} if self.calib is not None else {}
        result = CompressedModel(self.options, plans, tensors, info)
        self._cache[key] = result
        return result

    def _sequential(self, plans: Mapping[str, MatrixPlan]) -> dict[str, torch.Tensor]:
        """Compress in forward order, each matrix fitted to the original outputs from compressed inputs."""
        assert self.calib is not None
        cfg, sd, opts = self.cfg, self.sd, self.options
        ids = self.calib.stats
        rope = _rope(cfg, ids.shape[1])
        x = _embed(sd, ids)
        xc = x.clone()
        tensors: dict[str, torch.Tensor] = {}
        stages = (("attn", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                  ("o", ("self_attn.o_proj",)), ("mlp", ("mlp.gate_proj", "mlp.up_proj")),
                  ("down", ("mlp.down_proj",)))
        for i in range(cfg.num_hidden_layers):
            self.progress(f"sequential fit (layer {i})", i, cfg.num_hidden_layers)
            orig = DecoderLayer(cfg, sd, i)
            residual = opts.absorbs_residual
            caps, x_next = _run_layer(orig, x, rope, capture=(*GROUPS, "h") if residual else GROUPS)
            work = DecoderLayer(cfg, sd, i)
            for group, lins in stages:
                names = [f"layers.{i}.{lin}" for lin in lins]
                local: dict[str, torch.Tensor] = {}
                if all(plans[n].rank is None for n in names):
                    for name in names:
                        local.update(_store(plans[name], name, sd[f"{name}.weight"], None))
                else:
                    want = (group, "h") if residual and group == "down" else (group,)
                    ccaps, _ = _run_layer(work, xc, rope, capture=want, stop_at=group)
                    a, ac = caps[group], ccaps[group]
                    gram_c, m = _gram(ac), _gram(a, ac)
                    extra = None
                    if residual and group in ("o", "down"):
                        resid = (x - xc).reshape(-1, x.shape[-1]) if group == "o" else caps["h"] - ccaps["h"]
                        extra = _gram(resid, ac)  # RᵀX'
                    for name in names:
                        plan, w = plans[name], sd[f"{name}.weight"]
                        cross = w.double() @ m if extra is None else w.double() @ m + extra
                        fac = None if plan.rank is None else factorize_corrected(w, cross, gram_c, opts.damp)
                        local.update(_store(plan, name, w, fac))
                    del a, ac, gram_c, m, ccaps
                self._swap(work, lins, local, i)
                tensors.update(local)
            _, xc_next = _run_layer(work, xc, rope)
            assert x_next is not None and xc_next is not None
            x, xc = x_next, xc_next
        return tensors

    @staticmethod
    def _swap(layer: DecoderLayer, lins: tuple[str, ...], tensors: Mapping[str, torch.Tensor], index: int) -> None:
        for lin in lins:
            parent_name, attr = lin.split(".")
            prefix = f"layers.{index}.{lin}"
            local = dict(tensors)
            bias = layer.get_submodule(lin).bias if hasattr(layer.get_submodule(lin), "bias") else None
            if isinstance(bias, torch.Tensor):
                local[f"{prefix}.bias"] = bias.data
            setattr(layer.get_submodule(parent_name), attr, build_linear(local, prefix))

    # ---- budgets
    def dense_val_ppl(self) -> float:
        if self._dense_val_ppl is None:
            assert self.calib is not None
            self.progress("dense perplexity (held-out calibration)", 0, 1)
            self._dense_val_ppl = state_dict_perplexity(self.cfg, self.sd, self.calib.val)
        return self._dense_val_ppl

    def val_ppl(self, comp: CompressedModel) -> float:
        assert self.calib is not None
        if "val_ppl" not in comp.info:
            self.progress("perplexity (held-out calibration)", 0, 1)
            comp.info["val_ppl"] = state_dict_perplexity(self.cfg, comp.apply(self.sd), self.calib.val)
        return float(comp.info["val_ppl"])

    def run(self) -> CompressedModel:
        """Compress to the options' budget: a byte fraction, or the fewest bytes within a perplexity bound."""
        opts = self.options
        if opts.bytes is not None:
            return self.compress(opts.bytes)
        assert opts.max_ppl_increase is not None
        if self.calib is None:
            raise ConfigError("--svd max-ppl-increase needs calibration text")
        limit = self.dense_val_ppl() * (1 + opts.max_ppl_increase)
        hi = 1.0
        best = self.compress(hi)
        if self.val_ppl(best) > limit:
            raise ConfigError(f"--svd max-ppl-increase: even the largest budget gives perplexity "
                              f"{self.val_ppl(best):.2f} > {limit:.2f} on held-out calibration text")
        lo = 0.05
        steps = 0
        while hi - lo > 0.02 and steps < 8:
            mid = (lo + hi) / 2
            comp = self.compress(mid)
            self.progress(f"budget search: {mid:.3f} of dense bytes", steps, 8)
            if self.val_ppl(comp) <= limit:
                hi, best = min(mid, comp.bytes_ratio), comp
            else:
                lo = mid
            steps += 1
        best.info["val_ppl_limit"] = limit
        best.info["dense_val_ppl"] = self.dense_val_ppl()
        return best


def compress_model(cfg: ModelConfig, sd: Mapping[str, torch.Tensor], tokenizer: Any, options: SvdOptions,
                   progress: Progress | None = None) -> CompressedModel:
    """Compress the decoder-layer linear weights of ``sd`` (veriswarm names, fp32) to ``options``."""
    calib = None
    if options.needs_stats or options.max_ppl_increase is not None:
        calib = CalibrationSet.build(tokenizer, tokens=options.calib_tokens, seq_len=options.seq_len,
                                     val_tokens=options.val_tokens)
    return Compressor(cfg, sd, calib, options, progress).run()


def rank_fraction(plans: Mapping[str, MatrixPlan]) -> float:
    """Mean kept rank / full rank over low-rank matrices (1.0 when all are dense)."""
    vals = [p.rank / min(p.out_features, p.in_features) for p in plans.values() if p.rank is not None]
    return sum(vals) / len(vals) if vals else 1.0
