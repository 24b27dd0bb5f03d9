"""Consensus by re-execution: recompute a session's hops for one shard and compare, within tolerance.

A session's inputs to one shard, run as a single causal prefill, reproduce every step's output (the
VeriLLM observation applied per hop): the verifier checks a whole session with one forward pass, far
cheaper than the node's token-by-token decode. That also catches a node that answers a step right but
corrupts its KV cache: later steps' outputs then disagree with the prefill.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from veriswarm.errors import ReceiptError
from veriswarm.frames import DTYPE_NAMES, decode_tensor, frame_wire, sha256
from veriswarm.receipts import ReceiptDomain, context_seed, hex32, next_context
from veriswarm.sinks import HopRecord
from veriswarm.split.modeling import ShardModel

from .tolerance import TOLERANCE, position_errors

MAX_FRAME = 256 * 1024 * 1024


@dataclass(frozen=True)
class StepCheck:
    step: int
    receipt_id: str
    max_error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_error <= self.tolerance


@dataclass(frozen=True)
class SessionVerdict:
    """Outcome of re-executing one (session, shard) on one node."""

    node_address: str
    manifest_hash: str
    shard_index: int
    session_id: str
    steps: list[StepCheck] = field(default_factory=list)
    problem: str = ""  # a structural fault (broken chain, bad signature) found before any compute

    @property
    def passed(self) -> bool:
        return not self.problem and all(s.passed for s in self.steps)

    @property
    def first_failure(self) -> StepCheck | None:
        return next((s for s in self.steps if not s.passed), None)

    def summary(self) -> str:
        if self.problem:
            return self.problem
        worst = max(self.steps, key=lambda s: s.max_error / s.tolerance)
        verdict = "pass" if self.passed else f"FAIL at step {self.first_failure.step}"  # type: ignore[union-attr]
        return f"{verdict}: {len(self.steps)} steps, worst error {worst.max_error:.2e} (tolerance {worst.tolerance:.0e})"


def check_session_structure(records: Sequence[HopRecord], domain: ReceiptDomain) -> str:
    """Signatures, one signer, consecutive steps and positions, and an unbroken context chain.
    Returns "" when sound, else a one-line description of the first problem."""
    if not records:
        return "no records"
    first = records[0].receipt
    signer = records[0].node_address
    ctx = context_seed(first.manifest_hash, first.shard_index, first.session_id)
    position = 0
    for i, rec in enumerate(records):
        r = rec.receipt
        try:
            if r.signer(domain).lower() != signer.lower():
                return f"step {r.step}: receipt not signed by {signer}"
        except ReceiptError as exc:
            return f"step {r.step}: {exc}"
        if (r.manifest_hash, r.shard_index, r.session_id) != (first.manifest_hash, first.shard_index, first.session_id):
            return f"step {r.step}: receipt belongs to another manifest, shard or session"
        if r.step != i or r.start_pos != position:
            return f"receipt {i} claims step {r.step} at position {r.start_pos}; expected step {i} at {position}"
        if hex32(sha256(rec.input_frame)) != r.input_hash or hex32(sha256(rec.output_frame)) != r.output_hash:
            return f"step {r.step}: frames do not match the receipt's hashes"
        ctx = next_context(ctx, sha256(rec.input_frame))
        if hex32(ctx) != r.context_hash:
            return f"step {r.step}: context hash breaks the chain of inputs"
        position += r.num_tokens
    return ""


def reexecute_session(shard: ShardModel, records: Sequence[HopRecord], domain: ReceiptDomain) -> SessionVerdict:
    """Re-run every step of one node's session on one shard as a single prefill and compare."""
    head = records[0].receipt if records else None
    verdict = SessionVerdict(
        node_address=records[0].node_address if records else "",
        manifest_hash=head.manifest_hash if head else "", shard_index=head.shard_index if head else -1,
        session_id=head.session_id if head else "",
    )
    problem = check_session_structure(records, domain)
    if problem:
        return SessionVerdict(**{**verdict.__dict__, "problem": problem})
    inputs, outputs = [], []
    for rec in records:
        x = decode_tensor(rec.input_frame, max_bytes=MAX_FRAME, dtypes=frozenset(DTYPE_NAMES.values()))
        y = decode_tensor(rec.output_frame, max_bytes=MAX_FRAME, dtypes=frozenset(DTYPE_NAMES.values()))
        if x.dim() != 3 or x.shape[0] != 1 or y.shape != x.shape or x.shape[2] != shard.cfg.hidden_size:
            return SessionVerdict(**{**verdict.__dict__, "problem": f"step {rec.receipt.step}: malformed frames"})
        inputs.append(x)
        outputs.append(y)
    reference = shard(torch.cat([x.to(torch.float32) for x in inputs], dim=1))
    steps, pos = [], 0
    for rec, y in zip(records, outputs, strict=True):
        t = y.shape[1]
        errors = position_errors(y, reference[:, pos:pos + t])
        tolerance = TOLERANCE[frame_wire(rec.output_frame)]  # by wire format: a q8 frame decodes to fp32
        steps.append(StepCheck(rec.receipt.step, rec.receipt.receipt_id(), float(errors.max()), tolerance))
        pos += t
    return SessionVerdict(**{**verdict.__dict__, "steps": steps})
