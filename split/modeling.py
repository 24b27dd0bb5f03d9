"""A Llama-family decoder written as plain torch, cut at any layer boundary.

This one implementation runs in the node, in the verifier's re-execution and in the exactness
tests, so "the verifier recomputes what the node should have computed" holds by construction.
It covers Llama 2/3, SmolLM, Qwen2 (q/k/v biases) and Mistral (sliding window): biases are used
wherever the weights carry them. The split is checked against ``transformers`` in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module_hooks

from veriswarm.manifest import ModelConfig

from .kvcache import KVCache
from .svd_kernels import half_linear


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if dtype == torch.float32:  # the usual case: the same arithmetic, two dispatches fewer per norm
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse rotary frequencies for the rope types Llama-family checkpoints use."""
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim))
    scaling = cfg.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / float(scaling["factor"])
    if kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_ctx = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled)
    raise ValueError(f"rope_type {kind!r} is not supported")


class Rotary(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq: torch.Tensor = self.inv_freq  # type: ignore[assignment]
        freqs = positions.to(torch.float32)[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


class LowRankLinear(nn.Module):
    """y = U (V x) (+ b): the dense matrix is never rebuilt, so memory and traffic both fall."""

    def __init__(self, u: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.u = nn.Parameter(u, requires_grad=False)  # [out, r]
        self.v = nn.Parameter(v, requires_grad=False)  # [r, in]
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @property
    def rank(self) -> int:
        return int(self.v.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(F.linear(x, self.v.to(x.dtype)), self.u.to(x.dtype))
        return y if self.bias is None else y + self.bias


def build_linear(sd: Mapping[str, torch.Tensor], prefix: str) -> nn.Module:
    """A dense linear from ``prefix.weight`` or a low-rank one from ``prefix.u``/``prefix.v``.

    fp16 weights or factors (SVD-compressed shards, see ``svd_kernels``) get fp16 modules; fp32 ones
    take the paths below unchanged.
    """
    half = half_linear(sd, prefix)
    if half is not None:
        return half
    bias = sd.get(f"{prefix}.bias")
    if f"{prefix}.weight" in sd:
        w = sd[f"{prefix}.weight"]
        lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
        lin.weight = nn.Parameter(w, requires_grad=False)
        if bias is not None:
            lin.bias = nn.Parameter(bias, requires_grad=False)
        return lin
    if f"{prefix}.u" in sd and f"{prefix}.v" in sd:
        return LowRankLinear(sd[f"{prefix}.u"], sd[f"{prefix}.v"], bias)
    raise KeyError(f"no weights for {prefix} (expected {prefix}.weight or {prefix}.u/{prefix}.v)")


def rows_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, with a one-position input's output rows split over the intra-op threads.

    Why: for one position F.linear is a matrix-vector product, which torch hands to a single BLAS call
    that runs on one core (MKL on this project's AMD EPYC machines: 2 threads are no faster than 1) at
    that core's share of the memory bandwidth, while a decode step is nothing but such products. ``bmm``
    over P blocks of rows runs its blocks on P threads, each the same BLAS call on its own rows, so every
    output is the same dot product computed the same way: bitwise equal to F.linear (tested for every
    projection shape, with and without bias), ~1.8x faster on 2 cores (a matrix-vector product of the LM
    head: 6.6 -> 3.3 ms). Only fp32 with a contiguous weight whose rows split evenly; anything else is
    F.linear. Whether the threads help a whole forward depends on how soon they wake (see
    node.app._in_own_thread and docs/operators.md on GOMP_SPINCOUNT).
    """
    parts = torch.get_num_threads()
    n, k = weight.shape[0], weight.shape[-1]
    if (parts < 2 or n % parts or x.numel() != k or weight.dim() != 2 or x.dtype != torch.float32
            or weight.dtype != torch.float32 or not weight.is_contiguous()):
        return F.linear(x, weight, bias)
    xs = x.reshape(1, 1, k).expand(parts, 1, k)
    blocks = weight.view(parts, n // parts, k).transpose(1, 2)
    y = torch.bmm(xs, blocks) if bias is None else torch.baddbmm(bias.view(parts, 1, n // parts), xs, blocks)
    return y.view(*x.shape[:-1], n)  # block p holds rows p*n/P..(p+1)*n/P-1, in order


class StackedRows:
    """Dense linears that read the same input (q/k/v, gate/up), run as one matmul over their stacked rows.

    Each linear's weight (and bias) becomes a view into the stacked tensor, so the weights are stored once
    and the modules stay what every other user of this code (zk slices, hooks, adversaries) addresses.
    One matmul instead of several saves the per-call overhead that dominates a one-token decode on CPU;
    each output row is the same dot product either way (bitwise equal with MKL on this project's machines,
    and the exactness tests compare against ``transformers`` regardless).

    ``usable()`` is checked on every call: a linear with hooks (calibration, zk slices, traces) must be
    called itself, and one whose weight was replaced (not updated in place) no longer matches the stack.
    """

    def __init__(self, linears: Sequence[nn.Linear], weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.linears = tuple(linears)
        self.weight, self.bias = weight, bias
        self.sizes = [int(lin.weight.shape[0]) for lin in linears]
        self._ptrs = [(lin.weight.data_ptr(), None if lin.bias is None else lin.bias.data_ptr()) for lin in linears]

    @classmethod
    def build(cls, linears: Sequence[nn.Module]) -> StackedRows | None:
        """Stack these linears' rows, or None when they are not all plain dense linears alike (low-rank
        or fp16 modules, mixed dtypes or devices, biases on some only)."""
        if not all(type(lin) is nn.Linear for lin in linears):
            return None
        dense = [lin for lin in linears if isinstance(lin, nn.Linear)]
        weights = [lin.weight for lin in dense]
        biases = [lin.bias for lin in dense]
        if len({(w.dtype, w.device, w.shape[1]) for w in weights}) != 1:
            return None
        if any(b is None for b in biases) and not all(b is None for b in biases):
            return None
        weight = torch.cat([w.detach() for w in weights])
        bias = None if biases[0] is None else torch.cat([b.detach() for b in biases if b is not None])
        start = 0
        for lin in dense:
            end = start + int(lin.weight.shape[0])
            lin.weight = nn.Parameter(weight[start:end], requires_grad=False)
            if bias is not None:
                lin.bias = nn.Parameter(bias[start:end], requires_grad=False)
            start = end
        return cls(dense, weight, bias)

    def usable(self) -> bool:
        for lin, (w, b) in zip(self.linears, self._ptrs, strict=True):
            if _hooked(lin) or lin.weight.data_ptr() != w:
                return False
            if (None if lin.bias is None else lin.bias.data_ptr()) != b:
                return False
        return True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return rows_linear(x, self.weight, self.bias)


def project(lin: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``lin(x)``; a plain dense linear without hooks through :func:`rows_linear` (a module with hooks,
    or any other kind of projection, is called itself)."""
    if type(lin) is nn.Linear and not _hooked(lin):
        return rows_linear(x, lin.weight, lin.bias)
    return lin(x)


def _hooked(module: nn.Module) -> bool:
    """Whether calling ``module`` would run forward hooks (its own or global ones): then it must be called
    itself, not bypassed by a stacked or split matmul."""
    return bool(module._forward_hooks or module._forward_pre_hooks
                or _module_hooks._global_forward_hooks or _module_hooks._global_forward_pre_hooks)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, sd: Mapping[str, torch.Tensor], prefix: str) -> None:
        super().__init__()
        self.cfg = cfg
        self.q_proj = build_linear(sd, f"{prefix}.q_proj")
        self.k_proj = build_linear(sd, f"{prefix}.k_proj")
        self.v_proj = build_linear(sd, f"{prefix}.v_proj")
        self.o_proj = build_linear(sd, f"{prefix}.o_proj")
        self.qkv = StackedRows.build([self.q_proj, self.k_proj, self.v_proj])

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        start_pos: int,
        cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        cfg = self.cfg
        b, t, _ = x.shape
        heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        if self.qkv is not None and self.qkv.usable():
            # One matmul for q, k and v, and the rotary embedding applied to q and k together
            # (elementwise, so the same values as one at a time).
            y = self.qkv(x)
            qk = y[..., : cfg.q_size + cfg.kv_size].view(b, t, heads + kv_heads, cfg.head_dim).transpose(1, 2)
            qk = apply_rope(qk, cos, sin)
            q, k = qk[:, :heads], qk[:, heads:]
            v = y[..., cfg.q_size + cfg.kv_size:].view(b, t, kv_heads, cfg.head_dim).transpose(1, 2)
        else:
            q = self.q_proj(x).view(b, t, heads, cfg.head_dim).transpose(1, 2)
            k = self.k_proj(x).view(b, t, kv_heads, cfg.head_dim).transpose(1, 2)
            v = self.v_proj(x).view(b, t, kv_heads, cfg.head_dim).transpose(1, 2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.write(layer, start_pos, k, v)
        mask = _attention_mask(start_pos, t, k.shape[2], cfg.sliding_window, x.device)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and t > 1, enable_gqa=True
        )
        return project(self.o_proj, out.transpose(1, 2).reshape(b, t, cfg.q_size))


def _attention_mask(
    start_pos: int, t: int, total: int, window: int | None, device: torch.device
) -> torch.Tensor | None:
    """Boolean mask (True = attend) for t new queries at start_pos over `total` keys; None if causal suffices."""
    needs_window = window is not None and total > window
    if not needs_window and (t == 1 or start_pos == 0):
        return None  # one query sees every key; or a plain causal square
    q_pos = torch.arange(start_pos, start_pos + t, device=device)[:, None]
    k_pos = torch.arange(total, device=device)[None, :]
    allowed = k_pos <= q_pos
    if needs_window:
        assert window is not None
        allowed &= k_pos > q_pos - window
    return allowed


class MLP(nn.Module):
    def __init__(self, sd: Mapping[str, torch.Tensor], prefix: str) -> None:
        super().__init__()
        self.gate_proj = build_linear(sd, f"{prefix}.gate_proj")
        self.up_proj = build_linear(sd, f"{prefix}.up_proj")
        self.down_proj = build_linear(sd, f"{prefix}.down_proj")
        self.gate_up = StackedRows.build([self.gate_proj, self.up_proj])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is not None and self.gate_up.usable():
            gate, up = self.gate_up(x).split(self.gate_up.sizes, dim=-1)
            return project(self.down_proj, F.silu(gate) * up)
        return project(self.down_proj, F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, sd: Mapping[str, torch.Tensor], index: int) -> None:
        super().__init__()
        p = f"layers.{index}"
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.input_layernorm.weight.data = sd[f"{p}.input_layernorm.weight"]
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm.weight.data = sd[f"{p}.post_attention_layernorm.weight"]
        self.self_attn = Attention(cfg, sd, f"{p}.self_attn")
        self.mlp = MLP(sd, f"{p}.mlp")

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start_pos: int,
                cache: KVCache | None, layer: int) -> torch.Tensor:
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, start_pos, cache, layer)
        return h + self.mlp(self.post_attention_layernorm(h))


class ShardModel(nn.Module):
    """Decoder layers [layer_start, layer_end) of a model: hidden states in, hidden states out."""

    def __init__(self, cfg: ModelConfig, layer_start: int, layer_end: int, sd: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.cfg = cfg
        self.layer_start, self.layer_end = layer_start, layer_end
        self.rotary = Rotary(cfg)
        self.layers = nn.ModuleList(DecoderLayer(cfg, sd, i) for i in range(layer_start, layer_end))
        self.eval()

    @property
    def num_layers(self) -> int:
        return self.layer_end - self.layer_start

    def new_cache(self, max_length: int, batch: int = 1, dtype: torch.dtype = torch.float32) -> KVCache:
        return KVCache(self.num_layers, batch, self.cfg.num_key_value_heads, self.cfg.head_dim, max_length, dtype)

    @torch.inference_mode()
    def forward(self, hidden: torch.Tensor, start_pos: int = 0, cache: KVCache | None = None) -> torch.Tensor:
        """Run the shard on ``hidden`` [B, T, H] at positions start_pos..start_pos+T-1.

        With a cache, keys/values of earlier positions come from it and the new ones are added;
        without one, ``start_pos`` must be 0 (the whole sequence is given).
        """
        if cache is None and start_pos != 0:
            raise ValueError("a forward without a KV cache must start at position 0")
        if cache is not None and start_pos != cache.length:
            raise ValueError(f"cache holds {cache.length} positions but the step starts at {start_pos}")
        t = hidden.shape[1]
        positions = torch.arange(start_pos, start_pos + t, device=hidden.device)
        cos, sin = self.rotary(positions, hidden.dtype)
        x = hidden
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, start_pos, cache, i)
        if cache is not None:
            cache.advance(start_pos + t)
        return x


class HeadModel(nn.Module):
    """What the client keeps locally: token embeddings, the final norm and the LM head."""

    def __init__(self, cfg: ModelConfig, sd: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.embed.weight = nn.Parameter(sd["embed_tokens.weight"], requires_grad=False)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.norm.weight.data = sd["norm.weight"]
        lm = sd["embed_tokens.weight"] if cfg.tie_word_embeddings else sd["lm_head.weight"]
        self.lm_head = nn.Parameter(lm, requires_grad=False)
        self.eval()

    @torch.inference_mode()
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids)

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return rows_linear(self.norm(hidden), self.lm_head)
