"""A misbehaving node as a real process: the honest node app around a dishonest shard forward.

It signs well-formed receipts over its wrong outputs, so clients accept them; only a verifier that
re-executes can tell. Modes (``--mode``):

- ``noise``: add Gaussian noise of relative size ``--scale`` to every output.
- ``wrong_weights``: serve a different checkpoint (every weight perturbed by relative ``--scale``).
- ``skip_layer``: skip the shard's last layer.
- ``kv_corrupt``: answer honestly, but after step ``--after`` corrupt the KV cache (later steps go wrong).
- ``replay``: answer a step with the output of an earlier step of the same shape (a cached answer).
- ``equivocate``: honest the first time a context is computed, different (noisy) output every later time
  the same session inputs come again (two signed outputs for one context).
- ``sometimes``: like ``noise``, but only in a fraction ``--fraction`` of sessions (cheats when it hopes
  not to be watched; it cannot know which sessions are audited).

Usage: the same flags as ``veriswarm node start`` plus the mode flags.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
from pathlib import Path

import torch

from veriswarm.keys import load_keystore
from veriswarm.manifest import ModelDir
from veriswarm.node.app import make_app
from veriswarm.node.config import NodeConfig
from veriswarm.node.serve import _serve, register_on_chain, with_deployment
from veriswarm.receipts import address_of
from veriswarm.split.artifacts import load_shard
from veriswarm.split.kvcache import KVCache
from veriswarm.split.modeling import ShardModel


def corrupt(shard: ShardModel, args: argparse.Namespace) -> None:
    honest = shard.forward
    rng = torch.Generator().manual_seed(7)
    last: dict[tuple[int, ...], torch.Tensor] = {}
    cheating_sessions: dict[int, bool] = {}
    seen_inputs: set[bytes] = set()

    def noisy(out: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(out.shape, generator=rng) * out.std() * args.scale
        return out + noise

    def forward(hidden: torch.Tensor, start_pos: int = 0, cache: KVCache | None = None) -> torch.Tensor:
        if args.mode == "skip_layer":
            saved = shard.layers
            shard.layers = torch.nn.ModuleList(list(saved)[:-1])
            try:
                return honest(hidden, start_pos, cache)
            finally:
                shard.layers = saved
        out = honest(hidden, start_pos, cache)
        if args.mode == "noise":
            return noisy(out)
        if args.mode == "equivocate":
            digest = hidden.numpy().tobytes() + start_pos.to_bytes(4, "little")
            if digest in seen_inputs:
                return noisy(out)
            seen_inputs.add(digest)
            return out
        if args.mode == "sometimes":
            key = id(cache)
            if key not in cheating_sessions:
                cheating_sessions[key] = random.random() < args.fraction
            return noisy(out) if cheating_sessions[key] else out
        if args.mode == "kv_corrupt" and cache is not None and start_pos >= args.after:
            with torch.inference_mode():
                for k in cache._k:
                    k[:, :, : start_pos // 2] += 0.5  # poison old keys; this step's output stays honest
            return out
        if args.mode == "replay":
            shape = tuple(out.shape)
            cached = last.get(shape)
            last[shape] = out
            return cached.clone() if cached is not None else out
        return out

    shard.forward = forward  # type: ignore[method-assign]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", required=True,
                    choices=["noise", "wrong_weights", "skip_layer", "kv_corrupt", "replay", "sometimes", "equivocate"])
    ap.add_argument("--scale", type=float, default=1e-2)
    ap.add_argument("--after", type=int, default=8)
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--shard", type=int, required=True)
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--key", type=Path, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--torch-threads", type=int, default=0)
    ap.add_argument("--prefill-threads", type=int, default=0)
    ap.add_argument("--deployment", default="")
    args = ap.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    md = ModelDir.open(args.model_dir)
    shard = load_shard(md, args.shard)
    if args.mode == "wrong_weights":
        g = torch.Generator().manual_seed(11)
        with torch.no_grad():
            for p in shard.parameters():
                p.add_(torch.randn(p.shape, generator=g) * p.std().clamp_min(1e-3) * args.scale)
    corrupt(shard, args)
    key = load_keystore(args.key, os.environ["VERISWARM_KEY_PASSWORD"])
    cfg = with_deployment(NodeConfig(model_dir=args.model_dir, shard=args.shard, key_file=args.key, host=args.host,
                                     port=args.port, deployment=args.deployment, prefill_threads=args.prefill_threads))
    if cfg.deployment:  # a dishonest node registers and stakes like any other
        register_on_chain(cfg, key, md.manifest.hash)
    app = make_app(config=cfg, manifest=md.manifest, shard=shard, private_key=key)
    asyncio.run(_serve(app, cfg, address_of(key), md.manifest.hash))


if __name__ == "__main__":
    main()
