"""Honeypots for lazy verifiers: known-answer audit tasks with planted faults.

A honeypot is a session on one shard, computed with the real shard code and signed by a honeypot node
key (registered like any node), in which one step's output carries a planted fault. It is submitted to a
verifier exactly like real hops. A verifier that re-executes finds the fault; one that approves without
checking is caught approving a known-bad session — evidence against its bond or stake share: its signed pass
slashes its stake on chain through ``VerifierQuorum.penalise_honeypot_approval`` (docs/verification.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from veriswarm.frames import encode_tensor, sha256
from veriswarm.receipts import Receipt, ReceiptDomain, address_of, context_seed, hex32, next_context
from veriswarm.sinks import HopRecord
from veriswarm.split.kvcache import KVCache
from veriswarm.split.modeling import ShardModel


@dataclass(frozen=True)
class Honeypot:
    session_id: str
    shard_index: int
    node_address: str
    planted_step: int
    records: list[HopRecord]


#: changes a step's output before it is signed: (step, output, shard, cache) -> output
Corrupt = Callable[[int, torch.Tensor, ShardModel, KVCache], torch.Tensor]


def signed_session(shard: ShardModel, shard_index: int, manifest_hash: str, x: torch.Tensor, prompt_len: int,
                   key: bytes, *, domain: ReceiptDomain, corrupt: Corrupt | None = None,
                   node_url: str = "honeypot") -> tuple[list[HopRecord], float]:
    """Serve one session on a shard exactly as a node does (a prefill of ``prompt_len`` positions, then one
    position per step, through a KV cache), signing each step's receipt with ``key``. Returns the records
    and the seconds spent in the shard's forward passes."""
    session = hex32(os.urandom(32))
    cache = shard.new_cache(x.shape[1])
    ctx = context_seed(manifest_hash, shard_index, session)
    records, elapsed = [], 0.0
    chunks = [(0, prompt_len)] + [(p, p + 1) for p in range(prompt_len, x.shape[1])]
    for step, (a, b) in enumerate(chunks):
        inp = x[:, a:b].contiguous()
        t0 = time.perf_counter()
        out = shard(inp, a, cache)
        elapsed += time.perf_counter() - t0
        if corrupt is not None:
            out = corrupt(step, out, shard, cache)
        fin, fout = encode_tensor(inp), encode_tensor(out)
        ctx = next_context(ctx, sha256(fin))
        r = Receipt(manifest_hash, shard_index, session, step, a, b - a, hex32(sha256(fin)), hex32(ctx),
                    hex32(sha256(fout)), hex32(os.urandom(32)), 0).signed(key, domain)
        records.append(HopRecord(r, node_url, address_of(key), fin, fout))
    return records, elapsed


def make_honeypot(shard: ShardModel, shard_index: int, manifest_hash: str, key: bytes, *, domain: ReceiptDomain,
                  prompt_len: int = 8, steps: int = 6, planted_step: int | None = None, scale: float = 1e-2,
                  seed: int | None = None) -> Honeypot:
    """A signed session whose step ``planted_step`` (random by default) is off by ``scale`` (relative)."""
    g = torch.Generator().manual_seed(seed if seed is not None else int.from_bytes(os.urandom(4), "big"))
    planted = planted_step if planted_step is not None else int(torch.randint(0, steps, (1,), generator=g))
    x = torch.randn(1, prompt_len + steps - 1, shard.cfg.hidden_size, generator=g) * 3

    def plant(step: int, out: torch.Tensor, shard: ShardModel, cache: KVCache) -> torch.Tensor:
        return out + torch.randn(out.shape, generator=g) * out.std() * scale if step == planted else out

    records, _ = signed_session(shard, shard_index, manifest_hash, x, prompt_len, key, domain=domain, corrupt=plant)
    return Honeypot(records[0].receipt.session_id, shard_index, address_of(key), planted, records)


def judge(honeypot: Honeypot, verdicts: list[dict[str, object]]) -> str:
    """'caught' if the verifier flagged the honeypot session, 'approved' if it passed it (lazy), or
    'unaudited' if it has not reported on it."""
    for v in verdicts:
        if v.get("kind") == "link":  # a verdict about the frames between shards, not an audit of this session
            continue
        if v.get("session") == honeypot.session_id and v.get("shard") == honeypot.shard_index:
            return "approved" if v.get("passed") else "caught"
    return "unaudited"
