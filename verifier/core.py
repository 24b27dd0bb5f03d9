"""The verifier: receives checked hops, samples sessions unpredictably, re-executes them, and turns the
outcome into ledger entries (reputation, evidence)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from eth_utils import keccak

from veriswarm.errors import ReceiptError, VeriswarmError
from veriswarm.frames import sha256
from veriswarm.incentives.ledger import Ledger, ReceiptEntry
from veriswarm.incentives.mechanism import IncentiveParams, audit_probability
from veriswarm.manifest import ModelDir
from veriswarm.receipts import ReceiptDomain, hex32
from veriswarm.sinks import HopRecord
from veriswarm.split.artifacts import load_shard
from veriswarm.split.modeling import ShardModel

from .links import LinkFault, LinkIndex
from .reexec import SessionVerdict, reexecute_session
from .sampling import AuditBeacon
from .slashing import ChainSlasher

if TYPE_CHECKING:  # ezkl is loaded only by a verifier that is given a ZkAuditor
    from .trace import TraceEvidence
    from .zkaudit import ZkAuditor, ZkEvidence

log = logging.getLogger("veriswarm.verifier")
SessionKey = tuple[str, int, str]  # (session id, shard index, node address)


class VerifierError(VeriswarmError):
    """A submission was refused (malformed, badly signed, replayed, over limits, unknown manifest)."""


@dataclass
class _Pending:
    records: dict[int, HopRecord] = field(default_factory=dict)  # by step
    last_seen: float = field(default_factory=time.monotonic)
    bytes: int = 0


@dataclass
class VerifierConfig:
    address: str = "verifier"
    idle_s: float = 5.0  # a session is audited once no hop arrived for this long
    retention_s: float = 600.0  # sessions older than this are dropped unaudited
    max_pending_bytes: int = 2 * 1024**3
    epoch_s: float = 3600.0
    #: fixed audit probability; None: from the node's reputation (incentives.mechanism)
    audit_rate: float | None = None
    #: share of audits that pass re-execution which also ask the node for a zk slice proof (with a zk
    #: auditor; every disagreement is challenged regardless). Drawn from the beacon's secret, so a node
    #: cannot tell which sessions will be asked to prove.
    zk_sample_rate: float = 0.05


class Verifier:
    def __init__(self, model_dir: ModelDir, *, ledger: Ledger | None = None, domain: ReceiptDomain | None = None,
                 beacon: AuditBeacon | None = None, params: IncentiveParams | None = None,
                 config: VerifierConfig | None = None, slasher: ChainSlasher | None = None,
                 zk: ZkAuditor | None = None) -> None:
        self.model_dir = model_dir
        self.manifest = model_dir.manifest
        self.ledger = ledger
        self.domain = domain or ReceiptDomain()
        self.beacon = beacon or AuditBeacon()
        self.params = params or (ledger.params if ledger else IncentiveParams())
        self.config = config or VerifierConfig()
        self.slasher = slasher  # proven faults go on chain when set
        self.zk = zk  # when set, every disagreement is followed by a zk slice proof challenge (zkaudit.py)
        self.verdicts: deque[dict[str, object]] = deque(maxlen=1000)
        self._pending: dict[SessionKey, _Pending] = {}
        self._seen: set[str] = set()
        #: (node, context hash) → the first signed receipt seen for it: a second one with another output
        #: hash is equivocation, provable on chain by anyone with the two receipts.
        self._contexts: dict[tuple[str, str], HopRecord] = {}
        self.equivocations: list[tuple[HopRecord, HopRecord]] = []
        #: hops by (session, shard, step): each new hop's input is checked against shard i−1's output at once
        self._links = LinkIndex()
        self.link_faults: list[LinkFault] = []
        self._shards: dict[int, ShardModel] = {}
        self._lock = threading.Lock()
        self.stats = {"received": 0, "audited_sessions": 0, "skipped_sessions": 0, "faults": 0, "dropped": 0,
                      "links_checked": 0, "link_faults": 0, "zk_challenges": 0, "zk_sampled": 0, "zk_failed": 0,
                      "traces": 0, "traces_failed": 0, "traces_located": 0}

    def shard(self, index: int) -> ShardModel:
        if index not in self._shards:
            self._shards[index] = load_shard(self.model_dir, index)
        return self._shards[index]

    def pending_bytes(self) -> int:
        return sum(p.bytes for p in self._pending.values())

    # ---- intake --------------------------------------------------------------------------
    def submit(self, record: HopRecord) -> None:
        """Validate a hop and keep it for a possible audit. Raises VerifierError with one line."""
        r = record.receipt
        if r.manifest_hash != self.manifest.hash:
            raise VerifierError(f"receipt is for manifest {r.manifest_hash}, this verifier checks {self.manifest.hash}")
        if not 0 <= r.shard_index < len(self.manifest.shards):
            raise VerifierError(f"unknown shard index {r.shard_index}")
        try:
            signer = r.signer(self.domain)
        except ReceiptError as exc:
            raise VerifierError(str(exc)) from None
        if signer.lower() != record.node_address.lower():
            raise VerifierError(f"receipt signed by {signer}, not by the stated node {record.node_address}")
        if hex32(sha256(record.input_frame)) != r.input_hash or hex32(sha256(record.output_frame)) != r.output_hash:
            raise VerifierError("frames do not match the receipt's hashes")
        size = len(record.input_frame) + len(record.output_frame)
        rid = r.receipt_id()
        with self._lock:
            if rid in self._seen:
                raise VerifierError(f"receipt {rid[:18]}… was already submitted")
            earlier = self._contexts.setdefault((signer, r.context_hash), record)
            if earlier is not record and earlier.receipt.output_hash != r.output_hash:
                self._seen.add(rid)
                self._equivocation(earlier, record)
                return
            if self.pending_bytes() + size > self.config.max_pending_bytes:
                raise VerifierError("verifier is over its retention budget; try later")
            key = (r.session_id, r.shard_index, signer)
            pending = self._pending.setdefault(key, _Pending())
            if r.step in pending.records:
                raise VerifierError(f"step {r.step} of this session was already submitted with another receipt")
            pending.records[r.step] = record
            pending.bytes += size
            pending.last_seen = time.monotonic()
            self._seen.add(rid)
            self.stats["received"] += 1
            broken = self._links.add(record)
            self.stats["links_checked"] = self._links.checked
        for fault in broken:
            self._link_fault(fault)
        if self.ledger is not None:
            spec = self.manifest.shard(r.shard_index)
            self.ledger.record_receipts([ReceiptEntry(r, signer, spec.num_layers, int(time.time() // self.config.epoch_s))])

    def _equivocation(self, first: HopRecord, second: HopRecord) -> None:
        self.equivocations.append((first, second))
        self.stats["faults"] += 1
        node = first.node_address
        log.warning("equivocation by %s: two outputs for context %s", node, first.receipt.context_hash)
        self.verdicts.append({"kind": "equivocation", "node": node, "shard": first.receipt.shard_index,
                              "session": first.receipt.session_id,
                              "passed": False, "summary": "equivocation: two signed outputs for one context",
                              "time": time.time(), "evidence": second.receipt.receipt_id()})
        slash_id = None
        if self.ledger is not None:
            slash_id = self.ledger.record_slash(node, second.receipt.receipt_id(), "equivocation",
                                                {"first": first.receipt.to_json(), "second": second.receipt.to_json()})
        if self.slasher is not None:
            self._on_chain(slash_id, lambda: self.slasher.equivocation(first.receipt, second.receipt))  # type: ignore[union-attr]

    def _link_fault(self, fault: LinkFault) -> None:
        """A broken cross-hop link: a verdict against the link, with both signed receipts as evidence.

        Not a node fault (see links.py): the ledger's outcomes and slashes are per node and both receipts may
        be honest, so nothing is written there; the verdict names both nodes and the carrier as the suspect."""
        self.link_faults.append(fault)
        self.stats["link_faults"] += 1
        down = fault.downstream
        log.warning("%s (session %s)", fault.summary(), fault.session_id)
        self.verdicts.append({"kind": "link", "node": down.node_address, "shard": down.receipt.shard_index,
                              "session": fault.session_id, "step": fault.step, "passed": False,
                              "summary": fault.summary(), "time": time.time(),
                              "evidence": [fault.upstream.receipt.receipt_id(), down.receipt.receipt_id()],
                              "link": fault.to_json()})

    # ---- audits --------------------------------------------------------------------------
    def probability(self, node: str) -> float:
        if self.config.audit_rate is not None:
            return self.config.audit_rate
        rep = self.ledger.reputation(node) if self.ledger else self.params.initial_reputation
        return audit_probability(rep, self.params)

    def audit_due(self, *, force: bool = False) -> list[SessionVerdict]:
        """Audit (or skip, by the beacon's draw) every session that went idle; returns the audits run."""
        now = time.monotonic()
        with self._lock:
            ready = [k for k, p in self._pending.items() if force or now - p.last_seen >= self.config.idle_s]
            batches = [(k, self._pending.pop(k)) for k in ready]
        out = []
        for (session_id, shard, node), pending in batches:
            records = [pending.records[s] for s in sorted(pending.records)]
            selected = self.beacon.selected_steps(session_id, shard, len(records), self.probability(node))
            if not selected:
                self.stats["skipped_sessions"] += 1
                continue
            # Re-executing the prefix up to the last selected step checks every step in it (each step's
            # output depends on all earlier inputs): one prefill, and no work past what was drawn.
            records = records[: max(selected) + 1]
            verdict = reexecute_session(self.shard(shard), records, self.domain)
            if verdict.passed:
                verdict, zk = self._sampled_proof(verdict, records)
                self._record(verdict, records, zk)
            else:
                self._record(verdict, records, *self._dispute(verdict, records))
            out.append(verdict)
        return out

    def _zk_sampled(self, session_id: str, shard: int) -> tuple[bool, int]:
        """(is this passing audit also asked for a proof, which step): keccak of the beacon's secret, as
        the audit selection itself, so the node cannot predict it."""
        draw = int.from_bytes(keccak(self.beacon.secret + b"zk" + session_id.encode() + shard.to_bytes(4, "big")), "big")
        return draw / 2**256 < self.config.zk_sample_rate, draw

    def _sampled_proof(self, verdict: SessionVerdict, records: list[HopRecord]) -> tuple[SessionVerdict, ZkEvidence | None]:
        """For a sampled share of passing audits, ask the node for a zk proof of a registered slice of a
        random audited step. A node that cannot or will not prove (invalid or missing proof) fails the
        audit: it is not running the committed weights, or it refuses to show it."""
        if self.zk is None or self.config.zk_sample_rate <= 0:
            return verdict, None
        sampled, draw = self._zk_sampled(verdict.session_id, verdict.shard_index)
        if not sampled:
            return verdict, None
        step = draw % len(records)
        try:
            evidence = self.zk.challenge(self.shard(verdict.shard_index), records, step)
        except Exception as exc:  # the verifier's own side failed: the re-execution verdict stands
            log.error("sampled zk challenge of %s could not be run: %s: %s", verdict.node_address, type(exc).__name__, exc)
            return verdict, None
        if evidence is None:
            return verdict, None
        self.stats["zk_challenges"] += 1
        self.stats["zk_sampled"] += 1
        self.stats["zk_failed"] += int(evidence.failing)
        if evidence.failing:
            verdict = replace(verdict, problem=f"re-execution passed, but the sampled zk proof of step {step} failed: "
                                               f"{evidence.summary()}")
        return verdict, evidence

    def _dispute(self, verdict: SessionVerdict, records: list[HopRecord]) -> tuple[ZkEvidence | None, TraceEvidence | None]:
        """After a re-execution disagreement, narrow the first disputed step down to one layer (the node's
        signed per-layer transcript, verifier/trace.py), then challenge the node for a zk proof of a registered
        slice of that layer (of a random one when nothing was located). (None, None): no zk auditor, no
        disagreement, or a structural fault, which needs no compute to judge."""
        first = verdict.first_failure
        if self.zk is None or verdict.problem or first is None:
            return None, None
        shard = self.shard(verdict.shard_index)
        trace = None
        if self.zk.tracer is not None:
            try:
                trace = self.zk.tracer.challenge(shard, records, first.step)
            except Exception as exc:  # the verifier's own side failed: no trace evidence, the proof still runs
                log.error("trace of %s could not be run: %s: %s", verdict.node_address, type(exc).__name__, exc)
            if trace is not None:
                self.stats["traces"] += 1
                self.stats["traces_failed"] += int(trace.status in ("invalid", "missing"))
                self.stats["traces_located"] += int(trace.status == "located")
        try:
            evidence = self.zk.challenge(shard, records, first.step, trace=trace)
        except Exception as exc:  # the verifier's own side failed (e.g. its key cache): no evidence either way,
            # and the re-execution verdict must still be recorded
            log.error("zk challenge of %s could not be run: %s: %s", verdict.node_address, type(exc).__name__, exc)
            return None, trace
        if evidence is not None:
            self.stats["zk_challenges"] += 1
            self.stats["zk_failed"] += int(evidence.failing)
        return evidence, trace

    def _record(self, verdict: SessionVerdict, records: list[HopRecord], zk: ZkEvidence | None = None,
                trace: TraceEvidence | None = None) -> None:
        self.stats["audited_sessions"] += 1
        summary = (verdict.summary() + (f"; {trace.summary()}" if trace is not None else "")
                   + (f"; {zk.summary()}" if zk is not None else ""))
        entry: dict[str, object] = {"kind": "audit", "node": verdict.node_address, "shard": verdict.shard_index,
                                    "session": verdict.session_id, "passed": verdict.passed, "summary": summary,
                                    "time": time.time()}
        if trace is not None:  # the located layer and the per-layer numbers (hashes, not the frames)
            entry["trace"] = trace.to_json()
        if zk is not None:
            entry["zk"] = {k: v for k, v in zk.to_json().items() if k not in ("proof", "claimed_output")}
        self.verdicts.append(entry)
        if verdict.passed:
            log.info("audit pass: node %s shard %d: %s", verdict.node_address, verdict.shard_index, summary)
        else:
            self.stats["faults"] += 1
            log.warning("audit FAIL: node %s shard %d: %s", verdict.node_address, verdict.shard_index, summary)
        if self.ledger is None:
            return
        ids = [r.receipt.receipt_id() for r in records]
        if verdict.passed:
            self.ledger.record_audit(ids, self.config.address, "pass", summary)
            return
        bad = [s.receipt_id for s in verdict.steps if not s.passed] or ids[:1]
        self.ledger.record_audit(bad, self.config.address, "fault", summary)
        first = next(r for r in records if r.receipt.receipt_id() == bad[0])
        detail: dict[str, Any] = {"summary": summary, "receipt": first.receipt.to_json(),
                                  "session": verdict.session_id, "shard": verdict.shard_index}
        if zk is not None:  # the signed claim and proof (or why there is none) travel with the evidence
            detail["zk"] = zk.to_json()
        if trace is not None:  # the signed transcript, frames included, so anyone can redo the layer check
            detail["trace"] = trace.to_json(frames=True)
        slash_id = self.ledger.record_slash(verdict.node_address, bad[0], "verdict", detail)
        entry["evidence"] = bad[0]
        if self.slasher is not None:
            self._on_chain(slash_id, lambda: self.slasher.verdict(verdict.node_address, first.receipt, summary))  # type: ignore[union-attr]

    def _on_chain(self, slash_id: int | None, submit: Callable[[], dict[str, Any]]) -> None:
        """Submit a slash; a chain error is logged and the ledger keeps the evidence for a retry."""
        try:
            event = submit()
        except VeriswarmError as exc:
            log.error("could not submit the slash on chain (evidence kept in the ledger): %s", exc)
            return
        self.stats["slashes_submitted"] = self.stats.get("slashes_submitted", 0) + 1
        if self.ledger is not None and slash_id is not None:
            amount = event.get("amount")
            self.ledger.update_slash(slash_id, status="submitted", amount=int(amount) if amount is not None else None)

    def drop_stale(self) -> int:
        now = time.monotonic()
        with self._lock:
            stale = [k for k, p in self._pending.items() if now - p.last_seen > self.config.retention_s]
            for k in stale:
                del self._pending[k]
            self._links.prune(self.config.retention_s, now)
            if len(self._contexts) > 1_000_000:  # bounded memory: equivocation is checked over a window
                self._contexts.clear()
        self.stats["dropped"] += len(stale)
        return len(stale)
