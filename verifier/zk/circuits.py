"""ezkl circuits for slices: built once per slice's weights, cached on disk with their keys.

Circuit choices (measured, see docs/zk.md):

* weights ``fixed``: the slice's weights are constants of the circuit, so the verifying key (vk) *is*
  the binding to the committed weights: a proof made for other weights fails against the slice's vk.
* input ``polycommit``: the input vector enters as a KZG commitment, which is the first G1 point of
  the proof (bytes 0..64); the verifier recomputes it from the expected input. 576 public inputs
  would instead cost ~1.1M gas on chain (and a Poseidon-hashed input 14 s of proving).
* output ``public``: the slice's output rows are the proof's public instances.
* scale 20 for input and weights, no rescaling (``scale_rebase_multiplier`` 10): the output stays at
  scale 40 (60 for a low-rank pair), so no lookup tables and no range checks are needed, and a higher
  scale costs nothing. Public inputs/outputs are not range-checked: the verifier checks them itself.
* ``logrows``: the smallest k whose 2^k rows hold the whole circuit in one column (fewer rows per
  column add columns: measured 483k gas at k=13 against 688k at k=12 for the same 576→16 slice).

Everything derived here is a deterministic function of the weights, the scale, the ezkl version and
the SRS, so anyone holding the manifest's artifact (and the same SRS) re-derives the same vk hash.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ezkl
import numpy as np

from veriswarm.errors import ConfigError

from .errors import ProofError
from .onnx import matmul_chain
from .slices import SliceWeights
from .srs import ensure_srs, file_lock, srs_sha256

EZKL_VERSION = "23.0.5"
CIRCUIT_FORMAT = "veriswarm-zk-circuit/1"
SCALE = 20
#: BN254 scalar field modulus: every public instance is an element of this field.
FIELD_MODULUS = 21888242871839275222246405745257275088548364400416034343698204186575808495617
ROW_MARGIN = 32  # rows kept free for halo2's blinding factors
ENV_CACHE = "VERISWARM_ZK_CACHE"
_MAX_QUANT = 1 << 62


def default_cache_dir() -> Path:
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "veriswarm" / "zk"


@dataclass(frozen=True)
class ZkConfig:
    """Where circuits, keys and SRS files live, and the fixed-point scale (2^-scale quantum)."""

    cache_dir: Path = field(default_factory=default_cache_dir)
    srs_dir: Path | None = None  # None: srs.default_srs_dir()
    scale: int = SCALE
    generate_srs: bool | None = None  # None: allowed unless VERISWARM_ZK_TEST_SRS=0

    def __post_init__(self) -> None:
        if not isinstance(self.scale, int) or not 4 <= self.scale <= 24:
            raise ConfigError(f"zk scale must be an integer in 4..24, got {self.scale!r}")


# ---------------------------------------------------------------------------------- fixed point & felts

def quantize(x: np.ndarray, scale: int) -> np.ndarray:
    """round(x · 2^scale) as int64 (what the circuit's input column holds)."""
    a = np.asarray(x, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ProofError("slice input contains NaN or infinite values")
    q = np.rint(a * float(1 << scale))
    if np.abs(q).max(initial=0.0) >= _MAX_QUANT:
        raise ProofError(f"slice input is too large for fixed point at scale {scale}")
    return q.astype(np.int64)


def felt_hex(value: int) -> str:
    """An integer as ezkl writes a field element: 32 bytes little-endian, hex."""
    return (int(value) % FIELD_MODULUS).to_bytes(32, "little").hex()


def felt_to_int(felt: int) -> int:
    """A field element in [0, p) as the signed integer it encodes (centered at 0)."""
    return felt - FIELD_MODULUS if felt > FIELD_MODULUS // 2 else felt


def parse_felt_hex(text: str) -> int:
    raw = bytes.fromhex(text.removeprefix("0x"))
    if len(raw) != 32:
        raise ProofError("a field element must be 32 bytes")
    value = int.from_bytes(raw, "little")
    if value >= FIELD_MODULUS:
        raise ProofError("a field element is not reduced modulo the field")
    return value


# ---------------------------------------------------------------------------------- error bound

@dataclass(frozen=True)
class BoundCoefficients:
    """Per-row constants of the slice's weights that bound |float output − proven output| (see :func:`tolerance`).

    For y = U (V x): ``c1[j] = Σ_i |U_ji| ‖V_i‖₁``, ``c2[j] = Σ_i |U_ji| ‖V_i‖₂``, ``u1[j] = ‖U_j‖₁``,
    ``s = Σ_i ‖V_i‖₁``. A dense W is the case U = W, V = I: ``c1 = ‖W_j‖₁``, ``c2 = ‖W_j‖₂``, u1 = 1, s = 0.
    """

    c1: tuple[float, ...]
    c2: tuple[float, ...]
    u1: tuple[float, ...]
    s: float
    in_features: int
    rank: int
    bias: bool

    @classmethod
    def of(cls, weights: SliceWeights) -> BoundCoefficients:
        f0 = np.abs(weights.factors[0].astype(np.float64))
        if weights.kind == "dense":
            c1, c2, u1, s = f0.sum(1), np.sqrt((f0 ** 2).sum(1)), np.ones(f0.shape[0]), 0.0
        else:
            v = np.abs(weights.factors[1].astype(np.float64))
            v1, v2 = v.sum(1), np.sqrt((v ** 2).sum(1))
            c1, c2, u1, s = f0 @ v1, f0 @ v2, f0.sum(1), float(v1.sum())
        return cls(tuple(map(float, c1)), tuple(map(float, c2)), tuple(map(float, u1)), float(s),
                   weights.in_features, weights.rank, weights.bias is not None)

    def to_dict(self) -> dict[str, Any]:
        return {"c1": list(self.c1), "c2": list(self.c2), "u1": list(self.u1), "s": self.s,
                "in_features": self.in_features, "rank": self.rank, "bias": self.bias}


def tolerance(bound: BoundCoefficients, x: np.ndarray, scale: int, *, input_quanta: float = 1.0) -> np.ndarray:
    """Largest honest |float32 output − proven output| per row for input ``x`` (rigorous, first order, +1%).

    With ε = 2^-(scale+1) (half a quantum) and u = 2^-24 (fp32 rounding):
    input quantization (up to ``input_quanta`` full quanta, at least one: the node's and the verifier's
    float input may round differently, or differ by honest fp32 noise when the verifier allows it)
    2ε·q·c1; weight quantization ε·u1·‖x‖₁ + ε·s·‖x‖∞; fp32 accumulation (n + r)·u·c2·‖x‖₂;
    bias quantization ε.
    """
    xa = np.abs(np.asarray(x, dtype=np.float64))
    eps, u = 2.0 ** -(scale + 1), 2.0 ** -24
    c1, c2, u1 = (np.asarray(a) for a in (bound.c1, bound.c2, bound.u1))
    quant = 2 * eps * max(1.0, input_quanta) * c1 + eps * u1 * xa.sum() + eps * bound.s * xa.max(initial=0.0)
    fp = (bound.in_features + bound.rank) * u * c2 * float(np.sqrt((xa ** 2).sum()))
    tol: np.ndarray = 1.01 * (quant + fp) + (eps if bound.bias else 0.0) + 1e-12
    return tol


# ---------------------------------------------------------------------------------- circuits

@dataclass(frozen=True)
class SliceCircuit:
    """A built slice circuit: settings, compiled circuit, proving and verifying keys (all on disk)."""

    directory: Path
    key: str
    weights_sha256: str
    in_features: int
    rows: int
    rank: int
    scale: int
    output_scale: int
    logrows: int
    srs: Path
    srs_sha256: str
    settings: Path
    compiled: Path
    pk: Path
    vk: Path
    vk_sha256: str
    timings: dict[str, float] = field(default_factory=dict, compare=False)


def _run_args(scale: int, logrows: int) -> Any:
    ra: Any = ezkl.PyRunArgs()
    ra.input_scale = scale
    ra.param_scale = scale
    ra.scale_rebase_multiplier = 10  # never rescale: products keep their scale, no lookup tables
    ra.lookup_range = (0, 0)
    ra.logrows = logrows
    ra.input_visibility = "polycommit"
    ra.param_visibility = "fixed"
    ra.output_visibility = "public"
    ra.ignore_range_check_inputs_outputs = True
    return ra


def _canonical_settings(data: dict[str, Any], logrows: int) -> dict[str, Any]:
    """ezkl's settings with hash-ordered lists sorted and the timestamp zeroed.

    ezkl writes ``required_range_checks``/``required_lookups`` in hash-set order, which changes from
    run to run and changes the verifying key; sorting them makes the vk a function of the weights.
    """
    data = json.loads(json.dumps(data))
    data["run_args"]["logrows"] = logrows
    for name in ("required_range_checks", "required_lookups"):
        if isinstance(data.get(name), list):
            data[name] = sorted(data[name], key=lambda v: json.dumps(v, sort_keys=True))
    data["timestamp"] = 0
    return data


def circuit_key(weights: SliceWeights, scale: int) -> str:
    meta = {"format": CIRCUIT_FORMAT, "ezkl": EZKL_VERSION, "scale": scale, "kind": weights.kind,
            "shapes": [list(f.shape) for f in weights.factors], "bias": weights.bias is not None,
            "weights_sha256": weights.sha256}
    return hashlib.sha256(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _compile(weights: SliceWeights, scale: int, out: Path) -> dict[str, Any]:
    """Write model.onnx, settings.json and model.compiled into ``out``; return the metadata."""
    n = weights.in_features
    (out / "model.onnx").write_bytes(matmul_chain([1, n], weights.chain(), weights.bias))
    probe = out / "probe.json"
    t0 = time.perf_counter()
    if not ezkl.gen_settings(str(out / "model.onnx"), str(probe), py_run_args=_run_args(scale, 17)):
        raise ProofError("ezkl could not generate settings for the slice circuit")
    settings = json.loads(probe.read_text())
    probe.unlink()
    used = max([int(settings["num_rows"]), n, *map(int, settings["module_sizes"]["polycommit"] or [0])])
    logrows = max(8, math.ceil(math.log2(used + ROW_MARGIN)))
    (out / "settings.json").write_text(json.dumps(_canonical_settings(settings, logrows), sort_keys=True))
    if not ezkl.compile_circuit(str(out / "model.onnx"), str(out / "model.compiled"), str(out / "settings.json")):
        raise ProofError("ezkl could not compile the slice circuit")
    return {"logrows": logrows, "num_rows": int(settings["num_rows"]),
            "output_scale": int(settings["model_output_scales"][0]), "compile_s": time.perf_counter() - t0}


def build_circuit(weights: SliceWeights, config: ZkConfig | None = None) -> SliceCircuit:
    """The slice's circuit and keys, built on first use and cached under ``config.cache_dir`` (process-safe)."""
    config = config or ZkConfig()
    key = circuit_key(weights, config.scale)
    root = Path(config.cache_dir) / "circuits"
    cdir = root / key
    meta_path = cdir / "meta.json"
    if not meta_path.is_file():
        with file_lock(root / f".{key}.lock"):
            if not meta_path.is_file():
                tmp = Path(tempfile.mkdtemp(prefix=f".{key[:16]}.", dir=root))
                try:
                    meta = _compile(weights, config.scale, tmp)
                    meta.update(key=key, weights_sha256=weights.sha256, scale=config.scale, ezkl=EZKL_VERSION)
                    (tmp / "meta.json").write_text(json.dumps(meta, sort_keys=True))
                    if cdir.exists():
                        shutil.rmtree(cdir)
                    os.replace(tmp, cdir)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    meta = json.loads(meta_path.read_text())
    logrows = int(meta["logrows"])
    srs = ensure_srs(logrows, config.srs_dir, generate=config.generate_srs)
    srs_hash = srs_sha256(srs)
    kdir = cdir / f"keys-{srs_hash[:32]}"
    timings = {"compile_s": float(meta.get("compile_s", 0.0))}
    if not (kdir / "vk.key").is_file():
        with file_lock(cdir / ".keys.lock"):
            if not (kdir / "vk.key").is_file():
                tmp = Path(tempfile.mkdtemp(prefix=".keys.", dir=cdir))
                try:
                    t0 = time.perf_counter()
                    ok = ezkl.setup(str(cdir / "model.compiled"), str(tmp / "vk.key"), str(tmp / "pk.key"), str(srs),
                                    None, False)
                    if not ok:
                        raise ProofError("ezkl setup failed for the slice circuit")
                    setup_s = time.perf_counter() - t0
                    (tmp / "timings.json").write_text(json.dumps({"setup_s": setup_s}))
                    os.replace(tmp, kdir)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    try:
        timings.update(json.loads((kdir / "timings.json").read_text()))
    except (OSError, ValueError):
        pass
    return SliceCircuit(
        directory=cdir, key=key, weights_sha256=weights.sha256, in_features=weights.in_features,
        rows=weights.spec.rows, rank=weights.rank, scale=config.scale, output_scale=int(meta["output_scale"]),
        logrows=logrows, srs=srs, srs_sha256=srs_hash, settings=cdir / "settings.json",
        compiled=cdir / "model.compiled", pk=kdir / "pk.key", vk=kdir / "vk.key",
        vk_sha256=_file_sha256(kdir / "vk.key"), timings=timings,
    )
