"""The real SmolLM2 slice (576→16 rows of a q_proj), proven, verified off chain and on a real anvil devnet."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from veriswarm.frames import encode_tensor, sha256
from veriswarm.manifest import ModelDir
from veriswarm.split.artifacts import load_shard
from veriswarm.verifier.zk import (
    ProofError,
    SliceSpec,
    VkRegistry,
    ZkConfig,
    evm,
    extract_slice_weights,
    prove_slice,
    register_slice,
    slice_io_from_frame,
    tolerance,
    verify_slice,
)

GAS_BUDGET = 600_000


@pytest.mark.slow
def test_smollm2_slice_proof_verifies_off_and_on_chain(smollm2: tuple[Any, Any, Path], tmp_path: Path) -> None:
    model, _, model_dir = smollm2
    md = ModelDir.open(model_dir)
    assert md.manifest.config.hidden_size == 576
    spec = SliceSpec(md.manifest.hash, 1, 10, "self_attn.q_proj", 208)
    # The committed input frame of shard 1: the real hidden states after shard 0 for a few tokens.
    with torch.no_grad():
        hidden = model.model.embed_tokens(torch.tensor([[1, 9690, 314, 253, 1789, 28]]))
    frame = encode_tensor(load_shard(md, 0)(hidden).contiguous())
    x, y = slice_io_from_frame(load_shard(md, 1), spec, frame, token=5, input_hash=sha256(frame))
    assert x.shape == (576,) and y.shape == (16,)

    config = ZkConfig(cache_dir=tmp_path / "zk")
    registry = VkRegistry()
    entry = register_slice(md, spec, config=config, registry=registry)
    weights = extract_slice_weights(md, spec)
    proof = prove_slice(spec, weights, x, config=config)
    assert verify_slice(spec, proof, x, y, registry, reference_output=weights.reference(x))
    proven = proof.output_values(entry.circuit.output_scale)
    assert np.abs(proven - weights.reference(x)).max() < 1e-4  # measured ~2e-6 at scale 20
    assert (np.abs(proven - y) <= tolerance(entry.bound, x, entry.circuit.scale)).all()
    bad = dataclasses.replace(proof, outputs=(proof.outputs[0] + 1, *proof.outputs[1:]))
    with pytest.raises(ProofError, match="does not verify"):
        verify_slice(spec, bad, x, bad.output_values(entry.circuit.output_scale), registry)

    compiled = evm.compile_verifier(evm.write_verifier(entry.circuit))
    assert compiled.runtime_size < 24_576  # deployable under EIP-170
    flipped = bytearray(proof.proof)
    flipped[300] ^= 1
    with evm.Anvil() as w3:
        address, _ = evm.deploy_verifier(w3, compiled)
        gas = evm.verify_on_chain(w3, address, proof)
        assert 0 < gas <= GAS_BUDGET
        assert not evm.call_verifier(w3, address, evm.calldata(bad))  # tampered public output reverts
        assert not evm.call_verifier(w3, address, evm.calldata(dataclasses.replace(proof, proof=bytes(flipped))))
        with pytest.raises(ProofError, match="rejected"):
            evm.verify_on_chain(w3, address, bad)
