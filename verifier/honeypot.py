"""Honeypots for lazy verifiers: known-answer audit tasks with planted faults.

A honeypot is a session on one shard, computed with the real shard code and signed by a honeypot node
key (registered like any node), in which one step's output carries a planted fault. It is submitted to a
verifier exactly like real hops. A verifier that re-executes finds the fault; one that approves without
checking is caught approving a known-bad session — evidence against its bond or stake share. (On-chain
penalties for verifiers are not in the contracts yet: see docs/verification.md.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from veriswarm.frames import encode_tensor, sha256
from veriswarm.receipts import Receipt, ReceiptDomain, address_of, context_seed, hex32, next_context
from veriswarm.sinks import HopRecord
from veriswarm.split.modeling import ShardModel


@dataclass(frozen=True)
class Honeypot:
    session_id: str
    shard_index: int
    node_address: str
    planted_step: int
    records: list[HopRecord]


def make_honeypot(shard: ShardModel, shard_index: int, manifest_hash: str, key: bytes, *, domain: ReceiptDomain,
                  prompt_len: int = 8, steps: int = 6, planted_step: int | None = None, scale: float = 1e-2,
                  seed: int | None = None) -> Honeypot:
    """A signed session whose step ``planted_step`` (random by default) is off by ``scale`` (relative)."""
    g = torch.Generator().manual_seed(seed if seed is not None else int.from_bytes(os.urandom(4), "big"))
    planted = planted_step if planted_step is not None else int(torch.randint(0, steps, (1,), generator=g))
    x = torch.randn(1, prompt_len + steps - 1, shard.cfg.hidden_size, generator=g) * 3
    session = hex32(os.urandom(32))
    cache = shard.new_cache(x.shape[1])
    ctx = context_seed(manifest_hash, shard_index, session)
    chunks = [(0, prompt_len)] + [(p, p + 1) for p in range(prompt_len, x.shape[1])]
    records = []
    for step, (a, b) in enumerate(chunks):
        inp = x[:, a:b].contiguous()
        out = shard(inp, a, cache)
        if step == planted:
            out = out + torch.randn(out.shape, generator=g) * out.std() * scale
        fin, fout = encode_tensor(inp), encode_tensor(out)
        ctx = next_context(ctx, sha256(fin))
        r = Receipt(manifest_hash, shard_index, session, step, a, b - a, hex32(sha256(fin)), hex32(ctx),
                    hex32(sha256(fout)), hex32(os.urandom(32)), 0).signed(key, domain)
        records.append(HopRecord(r, "honeypot", address_of(key), fin, fout))
    return Honeypot(session, shard_index, address_of(key), planted, records)


def judge(honeypot: Honeypot, verdicts: list[dict[str, object]]) -> str:
    """'caught' if the verifier flagged the honeypot session, 'approved' if it passed it (lazy), or
    'unaudited' if it has not reported on it."""
    for v in verdicts:
        if v.get("session") == honeypot.session_id and v.get("shard") == honeypot.shard_index:
            return "approved" if v.get("passed") else "caught"
    return "unaudited"
