"""Slices: the small, pre-registered pieces of a shard's computation that a node proves in zero knowledge.

A slice is ``rows`` consecutive output rows of one linear layer of one decoder layer of one shard of
one manifest: ``y = W[r0:r0+rows] · x (+ b[r0:r0+rows])`` for a dense matrix, or
``y = U[r0:r0+rows] · (V · x) (+ b)`` for an SVD shard's low-rank factor pair. ``x`` is the input
vector of that matrix for one token; the verifier derives it from the hop's committed input frame by
re-running the shard with the shared model code (:func:`slice_io` / :func:`slice_io_from_frame`).

A low-rank pair costs rank × (in + rows) multiplications, so for large ranks a slice can name one
factor instead: ``<matrix>.v`` is ``h[r0:r0+rows] = V[r0:r0+rows] · x`` and ``<matrix>.u`` is
``y[r0:r0+rows] = U[r0:r0+rows] · h (+ b)``, with ``h = V · x`` (which the verifier derives too).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from veriswarm.errors import ManifestError, ProtocolError
from veriswarm.frames import decode_tensor, sha256
from veriswarm.manifest import Manifest, ModelDir
from veriswarm.split.kvcache import KVCache
from veriswarm.split.modeling import ShardModel

from .errors import ProofError

SLICE_FORMAT = "veriswarm-zk-slice/1"
WEIGHTS_FORMAT = "veriswarm-zk-weights/1"
DEFAULT_ROWS = 16
MAX_ROWS = 256
MAX_FRAME_BYTES = 256 * 1024 * 1024
MATRICES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
FACTORS = ("u", "v")
_HASH_RE = re.compile(r"^0x[0-9a-f]{64}$")


def split_matrix(name: Any) -> tuple[str, str | None]:
    """``"self_attn.q_proj"`` → (it, None); ``"self_attn.q_proj.v"`` → ("self_attn.q_proj", "v")."""
    if isinstance(name, str):
        if name in MATRICES:
            return name, None
        base, _, factor = name.rpartition(".")
        if base in MATRICES and factor in FACTORS:
            return base, factor
    raise ProofError(f"slice matrix {name!r} is not one of {', '.join(MATRICES)} (optionally + .u or .v)")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class SliceSpec:
    """Which piece of which committed computation: (manifest, shard, layer, matrix, output rows)."""

    manifest_hash: str
    shard: int
    layer: int  # absolute decoder-layer index (must lie in the shard's range)
    matrix: str  # e.g. "self_attn.q_proj", "mlp.down_proj"; "self_attn.q_proj.v": one low-rank factor
    row_start: int
    rows: int = DEFAULT_ROWS

    def __post_init__(self) -> None:
        if not isinstance(self.manifest_hash, str) or not _HASH_RE.match(self.manifest_hash):
            raise ProofError(f"slice manifest hash {self.manifest_hash!r} is not 0x + 64 lowercase hex digits")
        for name in ("shard", "layer", "row_start"):
            v = getattr(self, name)
            if not _is_int(v) or v < 0:
                raise ProofError(f"slice {name} must be a non-negative integer, got {v!r}")
        split_matrix(self.matrix)
        if not _is_int(self.rows) or not 1 <= self.rows <= MAX_ROWS:
            raise ProofError(f"slice rows must be an integer in 1..{MAX_ROWS}, got {self.rows!r}")

    @property
    def row_end(self) -> int:
        return self.row_start + self.rows

    def to_dict(self) -> dict[str, Any]:
        return {"format": SLICE_FORMAT, "manifest_hash": self.manifest_hash, "shard": self.shard, "layer": self.layer,
                "matrix": self.matrix, "row_start": self.row_start, "rows": self.rows}

    @classmethod
    def from_dict(cls, data: Any) -> SliceSpec:
        if not isinstance(data, dict) or data.get("format") != SLICE_FORMAT:
            raise ProofError(f"not a {SLICE_FORMAT} slice")
        keys = {"format", "manifest_hash", "shard", "layer", "matrix", "row_start", "rows"}
        if set(data) != keys:
            raise ProofError(f"slice fields must be exactly {sorted(keys)}")
        return cls(data["manifest_hash"], data["shard"], data["layer"], data["matrix"], data["row_start"], data["rows"])

    @property
    def slice_id(self) -> str:
        """0x + sha256 of the slice's canonical JSON: the key under which its verifying key is registered."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return "0x" + hashlib.sha256(canon).hexdigest()

    def describe(self) -> str:
        return (f"shard {self.shard} layer {self.layer} {self.matrix} rows {self.row_start}:{self.row_end} "
                f"of manifest {self.manifest_hash[:10]}…")


@dataclass(frozen=True, eq=False)
class SliceWeights:
    """The committed weights of one slice, as float32 arrays (fp16 storage widens exactly).

    ``factors`` is ``(W_rows,)`` [rows, in] for a dense matrix or ``(U_rows, V)`` ([rows, r], [r, in])
    for a low-rank pair; ``stored_dtype`` is the artifact's dtype.
    """

    spec: SliceSpec
    factors: tuple[np.ndarray, ...]
    bias: np.ndarray | None = None
    stored_dtype: str = "float32"

    def __post_init__(self) -> None:
        fs = tuple(np.ascontiguousarray(f, dtype=np.float32) for f in self.factors)
        if len(fs) not in (1, 2) or any(f.ndim != 2 for f in fs):
            raise ProofError("slice weights must be one matrix or one low-rank pair of matrices")
        if fs[0].shape[0] != self.spec.rows:
            raise ProofError(f"slice weights have {fs[0].shape[0]} rows, the slice has {self.spec.rows}")
        if len(fs) == 2 and fs[0].shape[1] != fs[1].shape[0]:
            raise ProofError(f"low-rank factors do not chain: {fs[0].shape} × {fs[1].shape}")
        if not all(np.isfinite(f).all() for f in fs):
            raise ProofError("slice weights contain NaN or infinite values")
        object.__setattr__(self, "factors", fs)
        if self.bias is not None:
            b = np.ascontiguousarray(self.bias, dtype=np.float32)
            if b.shape != (self.spec.rows,) or not np.isfinite(b).all():
                raise ProofError(f"slice bias must be {self.spec.rows} finite values")
            object.__setattr__(self, "bias", b)

    @property
    def kind(self) -> str:
        return "dense" if len(self.factors) == 1 else "lowrank"

    @property
    def in_features(self) -> int:
        return int(self.factors[-1].shape[1])

    @property
    def rank(self) -> int:
        return 0 if len(self.factors) == 1 else int(self.factors[1].shape[0])

    @cached_property
    def sha256(self) -> str:
        """sha256 over the slice's weights (kind, then each tensor's name, shape and float32 LE bytes)."""
        h = hashlib.sha256(f"{WEIGHTS_FORMAT}\0{self.kind}\0".encode())
        named = [("u" if self.kind == "lowrank" else "weight", self.factors[0])]
        if self.kind == "lowrank":
            named.append(("v", self.factors[1]))
        if self.bias is not None:
            named.append(("bias", self.bias))
        for name, arr in named:
            h.update(f"{name}\0{','.join(map(str, arr.shape))}\0".encode())
            h.update(arr.astype("<f4").tobytes())
        return h.hexdigest()

    def chain(self) -> list[np.ndarray]:
        """The matmul chain x @ F0 @ F1 … as [in, out] matrices (what the circuit computes)."""
        return [f.T.copy() for f in reversed(self.factors)]

    def reference(self, x: np.ndarray) -> np.ndarray:
        """The exact (float64) slice output for input ``x`` [in] or [tokens, in]."""
        h = np.asarray(x, dtype=np.float64)
        for f in self.chain():
            h = h @ f.astype(np.float64)
        return h if self.bias is None else h + self.bias.astype(np.float64)


def _weight_keys(spec: SliceSpec) -> str:
    return f"layers.{spec.layer}.{split_matrix(spec.matrix)[0]}"


def extract_slice_weights(model_dir: ModelDir, spec: SliceSpec, *, verify: bool = True) -> SliceWeights:
    """Read a slice's weights from its shard artifact (whose sha256 the manifest commits to)."""
    manifest = model_dir.manifest
    if manifest.hash != spec.manifest_hash:
        raise ProofError(f"slice is for manifest {spec.manifest_hash[:18]}…, this model directory has {manifest.hash[:18]}…")
    try:
        shard = manifest.shard(spec.shard)
    except ManifestError as exc:
        raise ProofError(str(exc)) from None
    if not shard.layer_start <= spec.layer < shard.layer_end:
        raise ProofError(f"layer {spec.layer} is not in shard {spec.shard} (layers {shard.layer_start}..{shard.layer_end - 1})")
    path = model_dir.artifact_path(shard.artifact, verify=verify)
    prefix = _weight_keys(spec)
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())

        def get(name: str) -> torch.Tensor | None:
            return f.get_tensor(f"{prefix}.{name}") if f"{prefix}.{name}" in keys else None

        w, u, v, b = get("weight"), get("u"), get("v"), get("bias")
    factor = split_matrix(spec.matrix)[1]
    if factor is not None and (u is None or v is None):
        raise ProofError(f"{prefix} is not low-rank in shard {spec.shard}: it has no .{factor} factor")
    if w is not None:
        stored = w
    elif u is not None and v is not None:
        stored = v if factor == "v" else u
    else:
        raise ProofError(f"shard {spec.shard} artifact has no weights for {prefix}")
    out = int(stored.shape[0])
    if spec.row_end > out:
        raise ProofError(f"rows {spec.row_start}:{spec.row_end} are outside {spec.matrix}'s {out} output rows")
    rows = slice(spec.row_start, spec.row_end)

    def arr(t: torch.Tensor) -> np.ndarray:
        return t.to(torch.float32).numpy()

    if factor is not None or w is not None:
        factors: tuple[np.ndarray, ...] = (arr(stored[rows]),)
    else:
        assert u is not None and v is not None
        factors = (arr(u[rows]), arr(v))
    bias = None if b is None or factor == "v" else arr(b[rows])
    return SliceWeights(spec, factors, bias, str(stored.dtype).removeprefix("torch."))


def _module(shard: ShardModel, spec: SliceSpec) -> nn.Module:
    if not shard.layer_start <= spec.layer < shard.layer_end:
        raise ProofError(f"layer {spec.layer} is not in this shard (layers {shard.layer_start}..{shard.layer_end - 1})")
    mod: nn.Module = shard.layers[spec.layer - shard.layer_start]
    for part in split_matrix(spec.matrix)[0].split("."):
        mod = getattr(mod, part)
    return mod


def slice_io(shard: ShardModel, spec: SliceSpec, hidden: torch.Tensor, *, token: int, start_pos: int = 0,
             cache: KVCache | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run the shard on ``hidden`` and return (input vector of the slice's matrix, its float output rows) at ``token``.

    ``hidden`` is the hop's input [1, T, H] (or [T, H]); with a KV cache, ``start_pos`` is the step's start.
    """
    if hidden.dim() == 2:
        hidden = hidden.unsqueeze(0)
    if hidden.dim() != 3 or hidden.shape[0] != 1:
        raise ProofError(f"hidden states must be [1, T, H], got {list(hidden.shape)}")
    if not _is_int(token) or not 0 <= token < hidden.shape[1]:
        raise ProofError(f"token {token!r} is outside the frame's {hidden.shape[1]} positions")
    module = _module(shard, spec)
    seen: dict[str, torch.Tensor] = {}
    me = threading.get_ident()

    def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        # Only this call's pass: a node runs other sessions' forwards through the same module concurrently.
        if threading.get_ident() == me:
            seen["x"], seen["y"] = inputs[0].detach().clone(), output.detach().clone()

    handle = module.register_forward_hook(hook)
    try:
        shard(hidden.to(torch.float32), start_pos, cache)
    finally:
        handle.remove()
    x, y = seen["x"][0, token], seen["y"][0, token]
    factor = split_matrix(spec.matrix)[1]
    if factor is not None:
        with torch.inference_mode():
            h = _low_rank_hidden(module, x, spec)
        x, y = (x, h) if factor == "v" else (h, y)
    if spec.row_end > y.shape[-1]:
        raise ProofError(f"rows {spec.row_start}:{spec.row_end} are outside {spec.matrix}'s {y.shape[-1]} output rows")
    return x.to(torch.float32).numpy().copy(), y[spec.row_start:spec.row_end].to(torch.float32).numpy().copy()


def _low_rank_hidden(module: nn.Module, x: torch.Tensor, spec: SliceSpec) -> torch.Tensor:
    """h = V x as the low-rank module computes it (fp16 factors: its own fp16 kernel)."""
    v = getattr(module, "v", None)
    if isinstance(v, nn.Module):
        out: torch.Tensor = v(x)
        return out
    if isinstance(v, torch.Tensor):
        return F.linear(x, v.to(x.dtype))
    raise ProofError(f"{split_matrix(spec.matrix)[0]} is not low-rank in this shard: no factor slices")


def slice_io_from_frame(shard: ShardModel, spec: SliceSpec, frame: bytes, *, token: int,
                        input_hash: str | bytes | None = None, start_pos: int = 0,
                        cache: KVCache | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`slice_io` on a committed input frame, checking it against the receipt's ``inputHash`` first."""
    if input_hash is not None:
        want = input_hash if isinstance(input_hash, bytes) else bytes.fromhex(input_hash.removeprefix("0x"))
        if sha256(frame) != want:
            raise ProofError("input frame does not match the receipt's inputHash")
    try:
        hidden = decode_tensor(frame, max_bytes=MAX_FRAME_BYTES, dtypes=frozenset({torch.float32}))
    except ProtocolError as exc:
        raise ProofError(f"bad input frame: {exc.message}") from None
    return slice_io(shard, spec, hidden, token=token, start_pos=start_pos, cache=cache)


def matrix_rows(manifest: Manifest, matrix: str, *, layer: int | None = None) -> int:
    """Output rows of ``matrix`` in this model (for a ``.v`` factor: its rank, from the manifest's matrix entry)."""
    base, factor = split_matrix(matrix)
    if factor == "v":
        entry = {} if layer is None else _matrix_entry(manifest, layer, base)
        if entry.get("format") != "lowrank" or not _is_int(entry.get("rank")):
            raise ProofError(f"layer {layer} {base} is not listed as low-rank in the manifest")
        return int(entry["rank"])
    matrix = base
    cfg = manifest.config
    return {"self_attn.q_proj": cfg.q_size, "self_attn.k_proj": cfg.kv_size, "self_attn.v_proj": cfg.kv_size,
            "self_attn.o_proj": cfg.hidden_size, "mlp.gate_proj": cfg.intermediate_size,
            "mlp.up_proj": cfg.intermediate_size, "mlp.down_proj": cfg.hidden_size}[matrix]


def _matrix_entry(manifest: Manifest, layer: int, base: str) -> dict[str, Any]:
    for shard in manifest.shards:
        if shard.layer_start <= layer < shard.layer_end:
            return dict(shard.matrices.get(f"layers.{layer}.{base}", {}))
    return {}


def all_slices(manifest: Manifest, shard: int, *, matrices: Sequence[str] = MATRICES,
               rows: int = DEFAULT_ROWS) -> list[SliceSpec]:
    """Every full ``rows``-row slice of the given matrices in every layer of ``shard``.

    Factor names (``<matrix>.u``/``.v``) count only where the manifest lists that matrix as low-rank.
    """
    spec = manifest.shard(shard)
    out: list[SliceSpec] = []
    for layer in range(spec.layer_start, spec.layer_end):
        for m in matrices:
            base, factor = split_matrix(m)
            if factor is not None and _matrix_entry(manifest, layer, base).get("format") != "lowrank":
                continue
            n = matrix_rows(manifest, m, layer=layer)
            out.extend(SliceSpec(manifest.hash, shard, layer, m, r0, rows) for r0 in range(0, n - rows + 1, rows))
    return out


def sample_slices(candidates: Sequence[SliceSpec], count: int, *, seed: int | bytes | str) -> list[SliceSpec]:
    """A reproducible random choice of ``count`` distinct slices (e.g. seeded by a beacon or the audit nonce)."""
    if not 0 <= count <= len(candidates):
        raise ProofError(f"cannot choose {count} slices out of {len(candidates)}")
    digest = hashlib.sha256(seed if isinstance(seed, bytes) else str(seed).encode()).digest()
    return random.Random(int.from_bytes(digest, "big")).sample(list(candidates), count)
