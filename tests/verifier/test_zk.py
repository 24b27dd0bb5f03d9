"""Sampled zk slice proofs on the tiny model: a valid proof verifies, every broken binding is rejected.

Circuits are tiny (64→16, logrows 10): setup and proving take well under a second each. Keys are
built once per session into a temporary cache; SRS files are cached in the usual SRS directory.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import ezkl
import numpy as np
import pytest
import torch

from veriswarm.errors import ConfigError, VeriswarmError
from veriswarm.frames import encode_tensor, sha256
from veriswarm.manifest import ModelDir
from veriswarm.split.artifacts import load_shard
from veriswarm.split.partition import write_model_dir
from veriswarm.split.sources import config_from_hf
from veriswarm.verifier.zk import (
    ProofError,
    SliceProof,
    SliceSpec,
    SliceWeights,
    VkRegistry,
    ZkConfig,
    all_slices,
    build_circuit,
    ensure_srs,
    extract_slice_weights,
    prove_slice,
    register_slice,
    sample_slices,
    slice_io,
    slice_io_from_frame,
    tolerance,
    verify_slice,
)
from veriswarm.verifier.zk.circuits import quantize
from veriswarm.verifier.zk.onnx import matmul_chain
from veriswarm.verifier.zk.proofs import _ezkl_verify, input_commitment

OTHER_MANIFEST = "0x" + "ab" * 32


@dataclasses.dataclass
class Audit:
    md: ModelDir
    spec: SliceSpec
    weights: SliceWeights
    registry: VkRegistry
    x: np.ndarray
    y: np.ndarray  # the node's fp32 output rows
    proof: SliceProof
    config: ZkConfig


@pytest.fixture(scope="session")
def zk_config(tmp_path_factory: pytest.TempPathFactory) -> ZkConfig:
    return ZkConfig(cache_dir=tmp_path_factory.mktemp("zk-cache"))


@pytest.fixture(scope="session")
def audit(tiny_dir: Path, zk_config: ZkConfig) -> Audit:
    md = ModelDir.open(tiny_dir)
    spec = SliceSpec(md.manifest.hash, 1, 2, "self_attn.q_proj", 16)
    torch.manual_seed(0)
    hidden = torch.randn(1, 5, md.manifest.config.hidden_size)
    x, y = slice_io(load_shard(md, 1), spec, hidden, token=3)
    registry = VkRegistry()
    register_slice(md, spec, config=zk_config, registry=registry)
    weights = extract_slice_weights(md, spec)
    proof = prove_slice(spec, weights, x, config=zk_config)
    return Audit(md, spec, weights, registry, x, y, proof, zk_config)


def _reject(a: Audit, proof: SliceProof, match: str, *, spec: SliceSpec | None = None, x: Any = None,
            y: Any = None) -> None:
    with pytest.raises(ProofError, match=match) as info:
        verify_slice(spec or a.spec, proof, a.x if x is None else x, a.y if y is None else y, a.registry)
    assert "\n" not in str(info.value)


def _own_outputs(a: Audit, proof: SliceProof) -> np.ndarray:
    """The outputs a proof claims, so that only the cryptographic check can reject it."""
    entry = a.registry.get(a.spec)
    assert entry is not None
    return proof.output_values(entry.circuit.output_scale)


# ------------------------------------------------------------------------------------------ valid

def test_valid_slice_proof_verifies_and_matches_float_output(audit: Audit) -> None:
    a = audit
    assert verify_slice(a.spec, a.proof, a.x, a.y, a.registry, reference_output=a.weights.reference(a.x)) is True
    entry = a.registry.get(a.spec)
    assert entry is not None and entry.vk_sha256 == a.proof.vk_sha256
    proven = a.proof.output_values(entry.circuit.output_scale)
    err = np.abs(proven - a.weights.reference(a.x))
    assert err.max() < 1e-4  # scale 20: measured ~1e-6
    assert (err <= tolerance(entry.bound, a.x, entry.circuit.scale)).all()
    # The same proof survives the wire format.
    again = SliceProof.from_json(json.loads(json.dumps(a.proof.to_json())))
    assert again == a.proof
    assert verify_slice(a.spec, again, a.x, a.y, a.registry)


def test_proof_input_comes_from_the_committed_frame(audit: Audit) -> None:
    a = audit
    torch.manual_seed(0)
    frame = encode_tensor(torch.randn(1, 5, a.md.manifest.config.hidden_size))
    x, y = slice_io_from_frame(load_shard(a.md, 1), a.spec, frame, token=3, input_hash=sha256(frame))
    assert np.array_equal(x, a.x) and np.array_equal(y, a.y)
    with pytest.raises(ProofError, match="inputHash"):
        slice_io_from_frame(load_shard(a.md, 1), a.spec, frame, token=3, input_hash=b"\0" * 32)
    with pytest.raises(ProofError, match="bad input frame"):
        slice_io_from_frame(load_shard(a.md, 1), a.spec, frame[:-4], token=3)


# ------------------------------------------------------------------------------------------ wrong slice / manifest

def test_proof_for_another_slice_is_rejected(audit: Audit) -> None:
    a = audit
    other = dataclasses.replace(a.spec, row_start=0)
    _reject(a, a.proof, "proof is for shard 1 layer 2 self_attn.q_proj rows 16:32", spec=other)
    registry = VkRegistry()
    register_slice(a.md, other, config=a.config, registry=registry)
    with pytest.raises(ProofError, match="proof is for"):
        verify_slice(other, a.proof, a.x, a.y, registry)


def test_proof_relabelled_as_another_slice_fails_cryptographically(audit: Audit) -> None:
    a = audit
    other = dataclasses.replace(a.spec, row_start=0)
    w = extract_slice_weights(a.md, other)
    forged = prove_slice(other, w, a.x, config=a.config)
    assert forged.vk_sha256 != a.proof.vk_sha256  # other rows, other weights, other vk
    forged = dataclasses.replace(forged, spec=a.spec, vk_sha256=a.proof.vk_sha256)
    _reject(a, forged, "does not verify against the registered vk", y=_own_outputs(a, forged))


def test_proof_for_another_manifest_is_rejected(audit: Audit) -> None:
    a = audit
    other = dataclasses.replace(a.spec, manifest_hash=OTHER_MANIFEST)
    _reject(a, a.proof, "proof is for manifest 0x", spec=other)
    relabelled = dataclasses.replace(a.proof, spec=other)
    _reject(a, relabelled, "proof is for manifest 0xabab")
    with pytest.raises(ProofError, match="slice is for manifest"):
        extract_slice_weights(a.md, other)


def test_unregistered_slice_is_rejected(audit: Audit) -> None:
    a = audit
    with pytest.raises(ProofError, match="no verifying key is registered"):
        verify_slice(a.spec, a.proof, a.x, a.y, VkRegistry())


# ------------------------------------------------------------------------------------------ wrong weights

def test_proof_with_other_weights_is_rejected(audit: Audit) -> None:
    a = audit
    w = a.weights.factors[0].copy()
    w[3, 7] += 0.25
    fake = SliceWeights(a.spec, (w,))
    assert fake.sha256 != a.weights.sha256
    proof = prove_slice(a.spec, fake, a.x, config=a.config)
    # Honestly labelled: the vk does not match the registered one.
    _reject(a, proof, "proof was made with vk", y=_own_outputs(a, proof))
    # Relabelled with the registered vk's hash: the proof fails against the registered vk (the weights are in the vk).
    _reject(a, dataclasses.replace(proof, vk_sha256=a.proof.vk_sha256), "does not verify", y=_own_outputs(a, proof))
    # And the honest proof fails against the other weights' vk.
    assert not _ezkl_verify(a.proof, build_circuit(fake, a.config))


def test_vk_hash_is_rederived_from_the_manifest_artifact(audit: Audit, tmp_path: Path) -> None:
    a = audit
    registered = a.registry.get(a.spec)
    assert registered is not None
    # Another process with a fresh cache (fresh settings, compile and setup) on the same SRS: the same vk bit for bit.
    code = ("import sys, json; from pathlib import Path; from veriswarm.manifest import ModelDir; "
            "from veriswarm.verifier.zk import SliceSpec, ZkConfig, slice_vk_hash; "
            "spec = SliceSpec.from_dict(json.loads(sys.argv[2])); "
            "print(slice_vk_hash(ModelDir.open(sys.argv[1]), spec, config=ZkConfig(cache_dir=Path(sys.argv[3]))))")
    out = subprocess.run([sys.executable, "-c", code, str(a.md.root), json.dumps(a.spec.to_dict()), str(tmp_path / "fresh")],
                         capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split()[-1] == registered.vk_sha256
    public = a.registry.to_json()["slices"][0]
    assert public["vk_sha256"] == registered.vk_sha256 and public["weights_sha256"] == a.weights.sha256
    assert public["slice_id"] == a.spec.slice_id and "circuit" not in public


# ------------------------------------------------------------------------------------------ tampered outputs / inputs

def test_claimed_output_that_differs_from_the_proof_is_rejected(audit: Audit) -> None:
    a = audit
    y = a.y.copy()
    y[5] += 0.01
    _reject(a, a.proof, "claimed output row 21", y=y)
    with pytest.raises(ProofError, match="reference output row"):
        verify_slice(a.spec, a.proof, a.x, a.y, a.registry, reference_output=y)


def test_tampered_public_output_fails_verification(audit: Audit) -> None:
    a = audit
    bad = dataclasses.replace(a.proof, outputs=(a.proof.outputs[0] + 1, *a.proof.outputs[1:]))
    _reject(a, bad, "does not verify", y=_own_outputs(a, bad))
    flipped = bytearray(a.proof.proof)
    flipped[200] ^= 1
    _reject(a, dataclasses.replace(a.proof, proof=bytes(flipped)), "does not verify")


def test_proof_on_another_input_is_rejected(audit: Audit) -> None:
    a = audit
    x2 = a.x.copy()
    x2[0] += 0.01
    proof = prove_slice(a.spec, a.weights, x2, config=a.config)
    _reject(a, proof, "differs from the committed activation", y=_own_outputs(a, proof))
    # Lying about the input it used: the declared input no longer opens the commitment in the proof.
    lied = dataclasses.replace(proof, input_q=a.proof.input_q)
    _reject(a, lied, "input commitment does not open", y=_own_outputs(a, proof))
    # Swapping in the right commitment too: the proof itself breaks.
    entry = a.registry.get(a.spec)
    assert entry is not None
    circuit = entry.circuit
    swapped = dataclasses.replace(lied, proof=input_commitment(circuit, a.proof.input_q) + proof.proof[64:])
    _reject(a, swapped, "does not verify", y=_own_outputs(a, proof))
    # One quantum of rounding freedom is allowed, but the commitment must still match.
    q0 = a.proof.input_q[0]
    step = 1 if q0 < a.x[0] * 2 ** circuit.scale else -1  # towards x: stays within one quantum of it
    nudged = dataclasses.replace(a.proof, input_q=(q0 + step, *a.proof.input_q[1:]))
    _reject(a, nudged, "input commitment")


# ------------------------------------------------------------------------------------------ bad input

def test_malformed_proofs_and_specs_are_rejected(audit: Audit) -> None:
    a = audit
    good = a.proof.to_json()
    for mutate, match in [
        (lambda d: d.update(format="nope"), "not a veriswarm-zk-proof/1"),
        (lambda d: d.pop("proof"), "malformed proof"),
        (lambda d: d.update(proof="zz"), "malformed proof"),
        (lambda d: d.update(outputs=["00" * 31]), "32 bytes"),
        (lambda d: d.update(outputs=["ff" * 32]), "not reduced"),
        (lambda d: d.update(vk_sha256="x"), "vk_sha256"),
        (lambda d: d["slice"].update(extra=1), "slice fields"),
        (lambda d: d["slice"].update(matrix="mlp.nope"), "is not one of"),
    ]:
        data = json.loads(json.dumps(good))
        mutate(data)
        with pytest.raises(ProofError, match=match):
            SliceProof.from_json(data)
    short = dataclasses.replace(a.proof, outputs=a.proof.outputs[:-1])
    _reject(a, short, "15 public outputs")
    _reject(a, a.proof, "expected input has shape", x=a.x[:-1])
    _reject(a, a.proof, "NaN", x=np.full_like(a.x, np.nan))
    with pytest.raises(ProofError, match="rows must be"):
        SliceSpec(a.spec.manifest_hash, 1, 2, "self_attn.q_proj", 0, 0)
    with pytest.raises(ProofError, match="manifest hash"):
        SliceSpec("0x1234", 1, 2, "self_attn.q_proj", 0)
    with pytest.raises(ProofError, match="outside self_attn.k_proj's 32 output rows"):
        extract_slice_weights(a.md, SliceSpec(a.spec.manifest_hash, 1, 2, "self_attn.k_proj", 24))
    with pytest.raises(ProofError, match="layer 0 is not in shard 1"):
        extract_slice_weights(a.md, SliceSpec(a.spec.manifest_hash, 1, 0, "self_attn.q_proj", 0))
    with pytest.raises(ProofError, match="weights are for"):
        prove_slice(dataclasses.replace(a.spec, row_start=0), a.weights, a.x, config=a.config)
    assert all(isinstance(e, VeriswarmError) for e in (ProofError("x"),))


def test_slice_catalogue_and_sampling(audit: Audit) -> None:
    a = audit
    slices = all_slices(a.md.manifest, 1)
    cfg = a.md.manifest.config
    per_layer = (2 * cfg.q_size + 2 * cfg.kv_size + 2 * cfg.intermediate_size + cfg.hidden_size) // 16
    assert len(slices) == 2 * per_layer and a.spec in slices
    chosen = sample_slices(slices, 4, seed="audit-nonce")
    assert chosen == sample_slices(slices, 4, seed="audit-nonce") and len(set(chosen)) == 4
    assert len({s.slice_id for s in slices}) == len(slices)


def test_srs_is_never_generated_when_not_allowed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ceremony file kzg9.srs"):
        ensure_srs(9, tmp_path, generate=False)
    with pytest.raises(ConfigError, match="logrows"):
        ensure_srs(40, tmp_path)


def test_tolerance_covers_honest_error_on_many_inputs(audit: Audit) -> None:
    """The stated tolerance must never reject an honest node: check it against the float path on random inputs."""
    a = audit
    entry = a.registry.get(a.spec)
    assert entry is not None
    rng = np.random.default_rng(0)
    w = a.weights.factors[0].astype(np.float32)
    for _ in range(200):
        x = (rng.standard_normal(a.weights.in_features) * rng.choice([0.1, 1, 30])).astype(np.float32)
        xq = quantize(x, entry.circuit.scale).astype(np.float64) / 2 ** entry.circuit.scale
        wq = np.rint(w.astype(np.float64) * 2 ** entry.circuit.scale) / 2 ** entry.circuit.scale
        exact_quantized = wq @ xq  # what the circuit proves
        fp32 = torch.nn.functional.linear(torch.from_numpy(x), torch.from_numpy(w)).numpy()
        assert (np.abs(fp32 - exact_quantized) <= tolerance(entry.bound, x, entry.circuit.scale)).all()


# ------------------------------------------------------------------------------------------ low rank

def test_low_rank_factor_pair_slice(tiny_hf: tuple[Any, Any, Path], tmp_path: Path, zk_config: ZkConfig) -> None:
    model, tok, _ = tiny_hf
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    name = "model.layers.2.self_attn.q_proj"
    u, s, vh = torch.linalg.svd(sd.pop(f"{name}.weight").double(), full_matrices=False)
    sd[f"{name}.u"], sd[f"{name}.v"] = (u[:, :8] * s[:8]).float(), vh[:8].float().contiguous()
    write_model_dir(out=tmp_path, name="tiny-lowrank", cfg=config_from_hf(model.config), state_dict=sd, tokenizer=tok,
                    num_shards=2, source={})
    md = ModelDir.open(tmp_path)
    spec = SliceSpec(md.manifest.hash, 1, 2, "self_attn.q_proj", 32)
    torch.manual_seed(1)
    x, y = slice_io(load_shard(md, 1), spec, torch.randn(1, 3, 64), token=2)
    weights = extract_slice_weights(md, spec)
    assert weights.kind == "lowrank" and weights.rank == 8
    registry = VkRegistry()
    entry = register_slice(md, spec, config=zk_config, registry=registry)
    assert entry.circuit.rank == 8 and entry.circuit.output_scale == 3 * entry.circuit.scale
    proof = prove_slice(spec, weights, x, config=zk_config)
    assert verify_slice(spec, proof, x, y, registry, reference_output=weights.reference(x))
    u2 = weights.factors[0].copy()
    u2[0, 0] += 0.1
    forged = prove_slice(spec, SliceWeights(spec, (u2, weights.factors[1])), x, config=zk_config)
    forged = dataclasses.replace(forged, vk_sha256=entry.vk_sha256)
    with pytest.raises(ProofError, match="does not verify"):
        verify_slice(spec, forged, x, forged.output_values(entry.circuit.output_scale), registry)

    # Factor slices: h = V x (rows of V), then y = U h (rows of U), each a small dense circuit.
    shard = load_shard(md, 1)
    hidden = torch.randn(1, 3, 64)
    v_spec = SliceSpec(md.manifest.hash, 1, 2, "self_attn.q_proj.v", 0, 8)
    u_spec = SliceSpec(md.manifest.hash, 1, 2, "self_attn.q_proj.u", 48)
    (xv, hv), (hu, yu) = (slice_io(shard, s, hidden, token=1) for s in (v_spec, u_spec))
    assert np.array_equal(xv, slice_io(shard, spec, hidden, token=1)[0]) and np.allclose(hu[:8], hv, atol=1e-6)
    assert np.allclose(yu, extract_slice_weights(md, u_spec).reference(hu), atol=1e-5)
    for s, xs, ys in ((v_spec, xv, hv), (u_spec, hu, yu)):
        fw = extract_slice_weights(md, s)
        assert fw.kind == "dense"
        register_slice(md, s, config=zk_config, registry=registry)
        assert verify_slice(s, prove_slice(s, fw, xs, config=zk_config), xs, ys, registry)
    with pytest.raises(ProofError, match="not low-rank"):
        extract_slice_weights(md, SliceSpec(md.manifest.hash, 1, 3, "self_attn.q_proj.u", 0))
    # The catalogue lists factor slices where the manifest says a matrix is low-rank.
    entry_2 = {"layers.2.self_attn.q_proj": {"format": "lowrank", "rank": 8, "dtype": "float32", "shape": [64, 64]}}
    shards = list(md.manifest.shards)
    shards[1] = dataclasses.replace(shards[1], matrices=entry_2)
    listed = all_slices(dataclasses.replace(md.manifest, shards=tuple(shards)), 1,
                        matrices=["self_attn.q_proj.v", "self_attn.q_proj.u"], rows=8)
    assert [(s.layer, s.matrix, s.row_start) for s in listed][:2] == [(2, "self_attn.q_proj.v", 0), (2, "self_attn.q_proj.u", 0)]
    assert len(listed) == 1 + 64 // 8


# ------------------------------------------------------------------------------------------ why "fixed", not polycommit

def test_polycommit_weights_share_one_vk_so_the_vk_alone_does_not_bind_them(tmp_path: Path) -> None:
    """Measured for the binding decision (docs/zk.md): with ``polycommit`` weights the vk depends only on the
    shape, so a proof for other weights verifies under it; with ``fixed`` weights it does not."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((16, 64)) * 0.1).astype(np.float32)
    w2 = w1.copy()
    w2[0, 0] += 0.5
    (tmp_path / "in.json").write_text(json.dumps({"input_data": [rng.standard_normal(64).tolist()]}))
    results = {}
    for vis in ("polycommit", "fixed"):
        ra: Any = ezkl.PyRunArgs()
        ra.input_scale = ra.param_scale = 20
        ra.scale_rebase_multiplier = 10
        ra.lookup_range = (0, 0)
        ra.logrows = 11  # 1024 committed weights need more than 2^10 rows
        ra.param_visibility = vis
        ra.ignore_range_check_inputs_outputs = True
        d = tmp_path / vis
        d.mkdir()
        for tag, w in (("a", w1), ("b", w2)):
            (d / f"{tag}.onnx").write_bytes(matmul_chain([1, 64], [w.T.copy()]))
        assert ezkl.gen_settings(str(d / "a.onnx"), str(d / "s.json"), py_run_args=ra)  # one settings file for both
        srs = str(ensure_srs(11))
        for tag in ("a", "b"):
            assert ezkl.compile_circuit(str(d / f"{tag}.onnx"), str(d / f"{tag}.c"), str(d / "s.json"))
            assert ezkl.setup(str(d / f"{tag}.c"), str(d / f"{tag}.vk"), str(d / f"{tag}.pk"), srs, None, False)
        ezkl.gen_witness(str(tmp_path / "in.json"), str(d / "b.c"), str(d / "b.w"), vk_path=str(d / "b.vk"), srs_path=srs)
        assert ezkl.prove(str(d / "b.w"), str(d / "b.c"), str(d / "b.pk"), str(d / "b.p"), srs)
        same_vk = (d / "a.vk").read_bytes() == (d / "b.vk").read_bytes()
        try:
            accepted = bool(ezkl.verify(str(d / "b.p"), str(d / "s.json"), str(d / "a.vk"), srs, False))
        except RuntimeError:
            accepted = False
        results[vis] = (same_vk, accepted)
    assert results["polycommit"] == (True, True)  # binding would rest on comparing the weight commitment in the proof
    assert results["fixed"] == (False, False)  # the vk is the binding
