"""Prove and verify slices; the registry of slice verifying keys.

What a valid :class:`SliceProof` for a registered slice establishes (see docs/zk.md): for the input
vector the verifier derived from the hop's committed input frame (to one fixed-point quantum), the
slice's output rows computed with the weights the manifest commits to (the slice's vk is derived from
them) are the proof's public outputs, and those match the rows the node claimed (within the stated
quantization tolerance).
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ezkl
import numpy as np

from veriswarm.manifest import ModelDir

from .circuits import (
    EZKL_VERSION,
    FIELD_MODULUS,
    BoundCoefficients,
    SliceCircuit,
    ZkConfig,
    build_circuit,
    felt_hex,
    felt_to_int,
    parse_felt_hex,
    quantize,
    tolerance,
)
from .errors import ProofError
from .slices import SliceSpec, SliceWeights, extract_slice_weights

PROOF_FORMAT = "veriswarm-zk-proof/1"
REGISTRY_FORMAT = "veriswarm-zk-registry/1"
MAX_PROOF_BYTES = 1 << 20
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class SliceProof:
    """What a node returns for a slice audit: the proof, its public outputs and the input it committed to."""

    spec: SliceSpec
    vk_sha256: str  # the registered key the node proved against (a label: verification uses the registry's)
    scale: int
    input_q: tuple[int, ...]  # the node's fixed-point input (round(x·2^scale)); its KZG commitment is in the proof
    outputs: tuple[int, ...]  # public instances: the output rows as field elements in [0, p)
    proof: bytes  # halo2 proof (EVM transcript); bytes 0..64 are the input commitment (x, y big-endian)
    prove_seconds: float = 0.0

    @property
    def input_commitment(self) -> bytes:
        return self.proof[:64]

    def output_values(self, output_scale: int) -> np.ndarray:
        return np.array([felt_to_int(v) for v in self.outputs], dtype=np.float64) / float(2 ** output_scale)

    def ezkl_json(self) -> dict[str, Any]:
        """The proof in ezkl's file format (only the fields ezkl's verifier reads)."""
        return {"instances": [[felt_hex(v) for v in self.outputs]], "proof": list(self.proof)}

    def to_json(self) -> dict[str, Any]:
        return {"format": PROOF_FORMAT, "slice": self.spec.to_dict(), "vk_sha256": self.vk_sha256, "scale": self.scale,
                "input_q": [str(v) for v in self.input_q], "outputs": [felt_hex(v) for v in self.outputs],
                "proof": self.proof.hex(), "prove_seconds": self.prove_seconds}

    @classmethod
    def from_json(cls, data: Any) -> SliceProof:
        if not isinstance(data, dict) or data.get("format") != PROOF_FORMAT:
            raise ProofError(f"not a {PROOF_FORMAT} proof")
        try:
            spec = SliceSpec.from_dict(data["slice"])
            vk = data["vk_sha256"]
            scale = data["scale"]
            input_q = tuple(int(v) for v in data["input_q"])
            outputs = tuple(parse_felt_hex(v) for v in data["outputs"])
            proof = bytes.fromhex(data["proof"])
            seconds = float(data.get("prove_seconds", 0.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProofError(f"malformed proof: {exc}") from None
        if not isinstance(vk, str) or not _SHA_RE.match(vk):
            raise ProofError("malformed proof: vk_sha256 is not 64 lowercase hex digits")
        if not isinstance(scale, int) or isinstance(scale, bool):
            raise ProofError("malformed proof: scale is not an integer")
        if not 64 < len(proof) <= MAX_PROOF_BYTES:
            raise ProofError(f"malformed proof: {len(proof)} proof bytes")
        return cls(spec, vk, scale, input_q, outputs, proof, seconds)


@dataclass(frozen=True)
class RegisteredSlice:
    """A slice's verifying key and what binds it: the weights' sha256, the SRS, the error-bound constants."""

    spec: SliceSpec
    weights_sha256: str
    circuit: SliceCircuit
    bound: BoundCoefficients

    @property
    def vk_sha256(self) -> str:
        return self.circuit.vk_sha256

    def public_dict(self) -> dict[str, Any]:
        """What can be published next to the manifest: everything but local file paths."""
        c = self.circuit
        return {"slice": self.spec.to_dict(), "slice_id": self.spec.slice_id, "weights_sha256": self.weights_sha256,
                "vk_sha256": c.vk_sha256, "srs_sha256": c.srs_sha256, "logrows": c.logrows, "scale": c.scale,
                "output_scale": c.output_scale, "ezkl": EZKL_VERSION, "bound": self.bound.to_dict()}


class VkRegistry:
    """Slice id → registered verifying key (the verifier's trusted list, derived from the manifest's artifacts)."""

    def __init__(self) -> None:
        self._entries: dict[str, RegisteredSlice] = {}

    def add(self, entry: RegisteredSlice) -> None:
        self._entries[entry.spec.slice_id] = entry

    def get(self, spec: SliceSpec) -> RegisteredSlice | None:
        return self._entries.get(spec.slice_id)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[RegisteredSlice]:
        return iter(self._entries.values())

    def to_json(self) -> dict[str, Any]:
        return {"format": REGISTRY_FORMAT, "slices": [e.public_dict() for e in self._entries.values()]}


def register_weights(weights: SliceWeights, config: ZkConfig | None = None) -> RegisteredSlice:
    circuit = build_circuit(weights, config)
    return RegisteredSlice(weights.spec, weights.sha256, circuit, BoundCoefficients.of(weights))


def register_slice(model_dir: ModelDir, spec: SliceSpec, *, config: ZkConfig | None = None,
                   registry: VkRegistry | None = None) -> RegisteredSlice:
    """Derive a slice's verifying key from the manifest's shard artifact (hash-checked) and register it."""
    entry = register_weights(extract_slice_weights(model_dir, spec), config)
    if registry is not None:
        registry.add(entry)
    return entry


def slice_vk_hash(model_dir: ModelDir, spec: SliceSpec, *, config: ZkConfig | None = None) -> str:
    """sha256 of the slice's verifying key, re-derived from the committed shard artifact (same SRS → same hash)."""
    return register_slice(model_dir, spec, config=config).vk_sha256


def _vector(x: Any, n: int, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 2 and a.shape[0] == 1:
        a = a[0]
    if a.shape != (n,):
        raise ProofError(f"{what} has shape {list(a.shape)}, expected [{n}]")
    if not np.isfinite(a).all():
        raise ProofError(f"{what} contains NaN or infinite values")
    return a


def prove_slice(spec: SliceSpec, weights: SliceWeights, x: Any, *, config: ZkConfig | None = None) -> SliceProof:
    """Prove ``weights · x`` for one slice (the node's side). Keys are built on first use and cached."""
    if weights.spec != spec:
        raise ProofError(f"weights are for {weights.spec.describe()}, not {spec.describe()}")
    circuit = build_circuit(weights, config)
    xq = quantize(_vector(x, weights.in_features, "slice input"), circuit.scale)
    with tempfile.TemporaryDirectory(prefix="vs-zk-") as tmp:
        t = Path(tmp)
        # x̂ / 2^scale is exact in float64, so ezkl's own quantization gives back exactly x̂.
        data = {"input_data": [[float(v) / float(1 << circuit.scale) for v in xq.tolist()]]}
        (t / "input.json").write_text(json.dumps(data))
        t0 = time.perf_counter()
        try:
            ezkl.gen_witness(str(t / "input.json"), str(circuit.compiled), str(t / "witness.json"),
                             vk_path=str(circuit.vk), srs_path=str(circuit.srs))
            ok = ezkl.prove(str(t / "witness.json"), str(circuit.compiled), str(circuit.pk), str(t / "proof.json"),
                            str(circuit.srs))
        except RuntimeError as exc:
            raise ProofError(f"proving failed: {str(exc).splitlines()[0]}") from None
        seconds = time.perf_counter() - t0
        if not ok:
            raise ProofError("proving failed")
        raw = json.loads((t / "proof.json").read_text())
    outputs = tuple(parse_felt_hex(v) for v in raw["instances"][0])
    if len(outputs) != spec.rows:
        raise ProofError(f"the circuit exposed {len(outputs)} outputs, expected {spec.rows}")
    return SliceProof(spec, circuit.vk_sha256, circuit.scale, tuple(int(v) for v in xq.tolist()), outputs,
                      bytes(raw["proof"]), seconds)


def input_commitment(circuit: SliceCircuit, input_q: tuple[int, ...]) -> bytes:
    """The KZG commitment (x ‖ y, 32 bytes big-endian each) of a fixed-point input column, as it opens a proof."""
    points: Any = ezkl.kzg_commit([felt_hex(v) for v in input_q], str(circuit.vk), str(circuit.settings),
                                  str(circuit.srs))
    if len(points) != 1:
        raise ProofError(f"expected one input commitment, ezkl computed {len(points)}")
    return bytes.fromhex(points[0].x)[::-1] + bytes.fromhex(points[0].y)[::-1]


def _ezkl_verify(proof: SliceProof, circuit: SliceCircuit) -> bool:
    with tempfile.TemporaryDirectory(prefix="vs-zkv-") as tmp:
        path = Path(tmp) / "proof.json"
        path.write_text(json.dumps(proof.ezkl_json()))
        try:
            return bool(ezkl.verify(str(path), str(circuit.settings), str(circuit.vk), str(circuit.srs), False))
        except RuntimeError:
            return False


def verify_slice(spec: SliceSpec, proof: SliceProof, expected_input: Any, claimed_output: Any,
                 registry: VkRegistry, *, reference_output: Any | None = None, input_slack: float = 1.0) -> bool:
    """Check a slice proof and all its bindings; return True or raise :class:`ProofError` (one line).

    ``expected_input``: the slice's input vector as the verifier derived it from the committed frame.
    ``claimed_output``: the node's float output rows. ``reference_output``: optionally the verifier's own
    float output rows. Both must lie within :func:`~veriswarm.verifier.zk.circuits.tolerance` of the
    proven outputs. ``input_slack``: how many fixed-point quanta the proof's committed input may differ
    from ``expected_input`` per element (default 1: rounding only; a verifier that derives the input
    through several layers allows honest fp32 noise, and the tolerance widens by the deviation found).
    """
    if proof.spec.manifest_hash != spec.manifest_hash:
        raise ProofError(f"proof is for manifest {proof.spec.manifest_hash[:18]}…, expected {spec.manifest_hash[:18]}…")
    if proof.spec != spec:
        raise ProofError(f"proof is for {proof.spec.describe()}, expected {spec.describe()}")
    entry = registry.get(spec)
    if entry is None:
        raise ProofError(f"no verifying key is registered for {spec.describe()}")
    circuit = entry.circuit
    if proof.vk_sha256 != entry.vk_sha256:
        raise ProofError(f"proof was made with vk {proof.vk_sha256[:16]}…, the slice's registered vk is {entry.vk_sha256[:16]}…")
    if hashlib.sha256(circuit.vk.read_bytes()).hexdigest() != entry.vk_sha256:
        raise ProofError(f"the registered vk file {circuit.vk} does not match its hash (corrupted cache)")
    if proof.scale != circuit.scale:
        raise ProofError(f"proof uses scale {proof.scale}, the slice's circuit uses {circuit.scale}")
    n = circuit.in_features
    x = _vector(expected_input, n, "expected input")
    if len(proof.input_q) != n:
        raise ProofError(f"proof commits to {len(proof.input_q)} inputs, the slice has {n}")
    if len(proof.outputs) != spec.rows:
        raise ProofError(f"proof has {len(proof.outputs)} public outputs, the slice has {spec.rows} rows")
    if not all(isinstance(v, int) and 0 <= v < FIELD_MODULUS for v in proof.outputs):
        raise ProofError("proof's public outputs are not field elements")
    input_q = np.array(proof.input_q, dtype=np.float64)
    worst = float(np.abs(input_q - x * float(1 << circuit.scale)).max(initial=0.0))
    if worst > max(1.0, input_slack):
        raise ProofError(f"proof's input differs from the committed activation by {worst:.3g} quanta "
                         f"(> {max(1.0, input_slack):.3g})")
    if input_commitment(circuit, proof.input_q) != proof.input_commitment:
        raise ProofError("proof's input commitment does not open to the input it declares")
    proven = proof.output_values(circuit.output_scale)
    tol = tolerance(entry.bound, x, circuit.scale, input_quanta=worst)
    for what, value in (("claimed", claimed_output), ("reference", reference_output)):
        if value is None:
            continue
        y = _vector(value, spec.rows, f"{what} output")
        excess = np.abs(y - proven) - tol
        if (excess > 0).any():
            j = int(np.argmax(excess))
            raise ProofError(f"{what} output row {spec.row_start + j} is {y[j]:.6g} but the proof gives {proven[j]:.6g} "
                             f"(tolerance {tol[j]:.3g})")
    if not _ezkl_verify(proof, circuit):
        raise ProofError(f"proof does not verify against the registered vk of {spec.describe()}")
    return True
