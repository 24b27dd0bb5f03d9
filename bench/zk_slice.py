"""Sampled zk slice proofs on the real SmolLM2-135M-Instruct: setup, prove, verify, on-chain gas.

One slice = 16 output rows of one projection of one layer (default: a random 16-row block of
``self_attn.q_proj``, 576→16, in the middle layer of shard 1 of a 4-shard split). Its input is derived
from a committed input frame (the hidden states entering the shard for a real prompt) with the shared
shard code; the node side proves, the verifier side checks the proof and its bindings, and the same
proof is verified on a local anvil devnet by the ezkl-generated Solidity verifier (compiled with solc-js).

Prints a human-readable summary and, last, one JSON line:
    {"zk_slice", "zk_slice_shape", "zk_setup_s", "zk_prove_s", "zk_verify_s", "evm_verify_gas", ...}
Times are wall-clock seconds on this machine; prove/verify are medians over --runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

from veriswarm.frames import decode_tensor, encode_tensor, sha256
from veriswarm.manifest import ModelDir
from veriswarm.split.artifacts import load_head, load_shard
from veriswarm.split.partition import write_model_dir
from veriswarm.split.sources import config_from_hf, load_hf, resolve_source
from veriswarm.verifier.zk import (
    MATRICES,
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
from veriswarm.verifier.zk.slices import matrix_rows

PROMPT = "Why is the sky blue? Answer in one paragraph."


def build_split(out: Path, shards: int) -> ModelDir:
    source = resolve_source(None)
    model, tok = load_hf(source)
    write_model_dir(out=out, name=source.name, cfg=config_from_hf(model.config), state_dict=model.state_dict(),
                    tokenizer=tok, num_shards=shards, source=source.describe())
    return ModelDir.open(out)


def shard_input_frame(md: ModelDir, shard: int) -> bytes:
    """The frame a node serving ``shard`` receives for PROMPT: embeddings run through the earlier shards."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(md.tokenizer_dir())
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    hidden = load_head(md).embed_tokens(torch.tensor([ids]))
    for i in range(shard):
        hidden = load_shard(md, i)(hidden)
    return encode_tensor(hidden.contiguous())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, help="an existing split (default: split SmolLM2 into a temp dir)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--shard", type=int, default=1)
    ap.add_argument("--layer", type=int, help="absolute layer (default: the shard's middle layer)")
    ap.add_argument("--matrix", default="self_attn.q_proj", choices=MATRICES)
    ap.add_argument("--row-start", type=int, help="first row (default: a random multiple of 16, --seed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=int, default=3, help="prove runs (verify runs 5× as many)")
    ap.add_argument("--cache-dir", type=Path, help="circuit/key cache (default: a fresh temp dir, so setup is measured)")
    ap.add_argument("--srs-dir", type=Path, help="SRS directory (default: ~/.cache/veriswarm/srs)")
    ap.add_argument("--no-evm", action="store_true", help="skip the on-chain part")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="zk-bench-") as tmp:
        t0 = time.perf_counter()
        md = ModelDir.open(args.model_dir) if args.model_dir else build_split(Path(tmp) / "model", args.shards)
        split_s = time.perf_counter() - t0
        shard_spec = md.manifest.shard(args.shard)
        layer = args.layer if args.layer is not None else (shard_spec.layer_start + shard_spec.layer_end) // 2
        rng = np.random.default_rng(args.seed)
        r0 = args.row_start if args.row_start is not None else 16 * int(rng.integers(matrix_rows(md.manifest, args.matrix) // 16))
        spec = SliceSpec(md.manifest.hash, args.shard, layer, args.matrix, r0, 16)
        config = ZkConfig(cache_dir=args.cache_dir or Path(tmp) / "zk-cache", srs_dir=args.srs_dir)

        # The committed input frame (its sha256 is the receipt's inputHash) and the slice's activation.
        frame = shard_input_frame(md, args.shard)
        shard = load_shard(md, args.shard)
        tokens = int(decode_tensor(frame, max_bytes=len(frame)).shape[1])
        token = tokens - 1
        x, y_float = slice_io_from_frame(shard, spec, frame, token=token, input_hash=sha256(frame))

        # Registration (verifier and node): compile, SRS (cached), setup. Then the warm path (cache hit).
        registry = VkRegistry()
        t0 = time.perf_counter()
        entry = register_slice(md, spec, config=config, registry=registry)
        register_cold_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        register_slice(md, spec, config=config)
        register_warm_s = time.perf_counter() - t0
        circuit = entry.circuit

        # Node: prove. Verifier: check proof + bindings.
        weights = extract_slice_weights(md, spec)
        proofs = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            proofs.append(prove_slice(spec, weights, x, config=config))
            proofs[-1] = dataclasses.replace(proofs[-1], prove_seconds=time.perf_counter() - t0)
        proof = proofs[0]
        prove_s = statistics.median(p.prove_seconds for p in proofs)
        verify_times = []
        for _ in range(5 * args.runs):
            t0 = time.perf_counter()
            verify_slice(spec, proof, x, y_float, registry, reference_output=weights.reference(x))
            verify_times.append(time.perf_counter() - t0)
        verify_s = statistics.median(verify_times)
        proven = proof.output_values(circuit.output_scale)
        err = float(np.abs(proven - weights.reference(x)).max())
        err_f32 = float(np.abs(proven - y_float).max())
        tol = tolerance(entry.bound, x, circuit.scale)
        rel = err / float(np.abs(weights.reference(x)).max())
        bad = dataclasses.replace(proof, outputs=(proof.outputs[0] + 1, *proof.outputs[1:]))
        try:
            verify_slice(spec, bad, x, bad.output_values(circuit.output_scale), registry)
            raise SystemExit("a tampered proof verified off chain")
        except ProofError:
            pass

        gas = deploy_gas = runtime = None
        solc_s = 0.0
        evm_tamper_reverts = None
        if not args.no_evm:
            t0 = time.perf_counter()
            compiled = evm.compile_verifier(evm.write_verifier(circuit))
            solc_s = time.perf_counter() - t0
            with evm.Anvil() as w3:
                address, deploy_gas = evm.deploy_verifier(w3, compiled)
                gas = evm.verify_on_chain(w3, address, proof)
                evm_tamper_reverts = not evm.call_verifier(w3, address, evm.calldata(bad))
            runtime = compiled.runtime_size
            if not evm_tamper_reverts:
                raise SystemExit("a tampered proof verified on chain")

    shape = [circuit.in_features, circuit.rows] if circuit.rank == 0 else [circuit.in_features, circuit.rank, circuit.rows]
    print(f"slice: {spec.describe()} ({' → '.join(map(str, shape))}), token {token} of {tokens}, scale {circuit.scale}, "
          f"logrows {circuit.logrows}")
    print(f"split {split_s:.1f}s; register cold {register_cold_s:.2f}s (compile {circuit.timings.get('compile_s', 0):.2f}s, "
          f"setup {circuit.timings.get('setup_s', 0):.2f}s), warm {register_warm_s:.3f}s")
    print(f"prove {prove_s:.2f}s (runs {[round(p.prove_seconds, 2) for p in proofs]}), verify {verify_s * 1000:.1f} ms, "
          f"proof {len(proof.proof)} bytes")
    print(f"max |proven − exact| {err:.3g} (relative {rel:.2g}), max |proven − fp32 node output| {err_f32:.3g}, "
          f"tolerance min {tol.min():.3g} max {tol.max():.3g}")
    if gas is not None:
        print(f"on chain: verifyProof {gas} gas (deploy {deploy_gas} gas, runtime {runtime} bytes, solc {solc_s:.1f}s); "
              f"tampered proof reverts: {evm_tamper_reverts}")
    print(json.dumps({
        "zk_slice": f"shard {spec.shard} layer {spec.layer} {spec.matrix} rows {spec.row_start}:{spec.row_end}",
        "zk_slice_shape": shape, "zk_scale": circuit.scale, "zk_logrows": circuit.logrows,
        "zk_setup_s": round(circuit.timings.get("setup_s", 0.0), 3), "zk_register_cold_s": round(register_cold_s, 3),
        "zk_register_warm_s": round(register_warm_s, 4), "zk_prove_s": round(prove_s, 3), "zk_verify_s": round(verify_s, 4),
        "zk_proof_bytes": len(proof.proof), "zk_max_abs_err": err, "zk_rel_err": rel, "zk_tolerance_max": float(tol.max()),
        "evm_verify_gas": gas, "evm_deploy_gas": deploy_gas, "evm_tampered_reverts": evm_tamper_reverts,
        "cores": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
