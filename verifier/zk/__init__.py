"""Sampled zk proofs of shard slices with ezkl (see docs/zk.md).

A node proves that a pre-registered slice of its computation (``rows`` output rows of one matrix of one
layer) maps the committed input to its claimed output with the weights the manifest commits to; the
verifier checks the proof off chain (:func:`verify_slice`) and the same proof verifies on chain with
the ezkl-generated Solidity verifier (:mod:`.evm`).
"""

from .circuits import SCALE, BoundCoefficients, SliceCircuit, ZkConfig, build_circuit, tolerance
from .errors import ProofError
from .proofs import (
    RegisteredSlice,
    SliceProof,
    VkRegistry,
    prove_slice,
    register_slice,
    register_weights,
    slice_vk_hash,
    verify_slice,
)
from .slices import (
    MATRICES,
    SliceSpec,
    SliceWeights,
    all_slices,
    extract_slice_weights,
    sample_slices,
    slice_io,
    slice_io_from_frame,
)
from .srs import ensure_srs

__all__ = [
    "MATRICES", "SCALE", "BoundCoefficients", "ProofError", "RegisteredSlice", "SliceCircuit", "SliceProof",
    "SliceSpec", "SliceWeights", "VkRegistry", "ZkConfig", "all_slices", "build_circuit", "ensure_srs",
    "extract_slice_weights", "prove_slice", "register_slice", "register_weights", "sample_slices", "slice_io",
    "slice_io_from_frame", "slice_vk_hash", "tolerance", "verify_slice",
]
