"""A zk proof after every disagreement: the dispute step of an audit.

When re-execution disagrees with a node on a session (verifier/core.py), the verifier first asks the node
for its signed per-layer transcript of the disputed step (``POST /v1/trace``, verifier/trace.py), which
locates the first layer the node computed wrongly; it then challenges the node (``POST /v1/prove`` on the
URL the hop was served from) to prove a **pre-registered** slice of that layer (of a random layer when
nothing was located): ``rows`` output rows of one matrix of one layer of the node's shard, at one
position of the disputed step, on the committed inputs (steps 0..step of the session on that shard, the
frames whose sha256 the node's own receipts sign). The verifier

1. derives the slice's input vector ``x`` and its output rows from those frames by honest re-execution
   (``slice_io``: one prefill, as re-execution runs it);
2. checks the node's signature over its claim (``zkwire.claim_digest``), so the result is attributable;
3. checks the proof with :func:`~veriswarm.verifier.zk.verify_slice`: the registered vk (derived from the
   manifest's committed shard artifact: the weights binding), the committed input (within one fixed-point
   quantum of the verifier's ``x``, by its KZG commitment), the node's claimed rows and the verifier's own
   rows both within the rigorous tolerance of the proven rows, and ``ezkl.verify``.

Outcome (:class:`ZkEvidence`): ``valid`` — this slice of the node's computation is correct (the
disagreement lies elsewhere in the hop; the re-execution verdict stands); ``invalid`` — the node answered
with a proof or claim that fails a check (wrong weights: another vk; wrong activation: the input binding;
wrong rows: the tolerance; forged bytes: ezkl); ``missing`` — no usable answer within the deadline
(refused, unreachable, too slow), which counts as failing exactly like ``invalid``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np
from eth_utils import keccak

from veriswarm.errors import ProtocolError
from veriswarm.manifest import ModelDir
from veriswarm.sinks import HopRecord
from veriswarm.split.modeling import ShardModel
from veriswarm.zkwire import (
    CALLER_HEADER,
    PROVE_PATH,
    ProveRequest,
    caller_header,
    claim_digest,
    claim_signer,
    decode_prove_response,
    encode_prove_request,
)

from .trace import MAX_RESPONSE as TRACE_MAX_RESPONSE
from .trace import Post, TraceAuditor, TraceEvidence, ask_node, post_bytes, session_hidden
from .zk import (
    ProofError,
    SliceProof,
    SliceSpec,
    VkRegistry,
    ZkConfig,
    all_slices,
    register_slice,
    sample_slices,
    slice_io,
    verify_slice,
)
from .zk.circuits import tolerance

log = logging.getLogger("veriswarm.verifier.zk")
MAX_FRAME = 256 * 1024 * 1024
MAX_RESPONSE = 4 * 1024 * 1024
#: How far (relative to ‖x‖₂, per element) the node's slice input may be from the verifier's: the node and the
#: verifier derive it through the layers before the matrix, and fp32 runs with other thread counts differ
#: (measured ≤ 1.4e-6 relative per hop, docs/verification.md). 10× below the fp32 re-execution tolerance
#: (1e-4), so it admits honest noise only; one fixed-point quantum (rounding) is always allowed.
INPUT_REL_SLACK = 1e-5
#: matrices whose input is the (normalised) hidden state: the smallest circuits of a layer
DISPUTE_MATRICES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")

def http_post(url: str, body: bytes, timeout_s: float) -> bytes:
    return post_bytes(url, body, timeout_s, max_bytes=MAX_RESPONSE)


def signed_post(private_key: bytes) -> Post:
    """A Post that signs every dispute request as this verifier (endpoint, time, body; node/zkauth.py
    checks it against the node's ``zk_verifiers``). It serves the proof and the trace challenge alike, so
    the answer's cap follows the endpoint."""
    def post(url: str, body: bytes, timeout_s: float) -> bytes:
        path = urlparse(url).path
        header = caller_header(private_key, path, body, int(time.time() * 1000))
        cap = MAX_RESPONSE if path == PROVE_PATH else TRACE_MAX_RESPONSE
        return post_bytes(url, body, timeout_s, max_bytes=cap, headers={CALLER_HEADER: header})
    return post


@dataclass(frozen=True)
class ZkEvidence:
    """What the dispute step found; kept in the verdict and in the slash evidence."""

    status: str  # "valid" | "invalid" | "missing"
    slice: SliceSpec
    session_id: str
    step: int
    token: int
    detail: str = ""
    #: max |node's claimed rows − verifier's re-executed rows| (None without a usable claim)
    claimed_vs_reference: float | None = None
    #: max |proven rows − verifier's rows| and the tolerance they were held to (None unless the proof parsed)
    proven_vs_reference: float | None = None
    tolerance: float | None = None
    #: max |proof's committed input − verifier's x| in fixed-point quanta
    input_quanta: float | None = None
    proof: dict[str, Any] | None = None
    claimed_output: list[float] | None = None
    signature: str = ""
    seconds: float = 0.0
    #: the layer the trace located (the slice was drawn in it); None: drawn among all registered slices
    trace_layer: int | None = None

    @property
    def failing(self) -> bool:
        """An invalid or missing proof counts against the node; a valid one is a correct slice."""
        return self.status != "valid"

    def summary(self) -> str:
        where = f"{self.slice.matrix} rows {self.slice.row_start}:{self.slice.row_end} layer {self.slice.layer} token {self.token}"
        if self.status == "valid":
            return f"zk proof valid for {where}: slice correct, the disagreement lies outside it"
        return f"zk proof {self.status.upper()} for {where}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "slice": self.slice.to_dict(), "slice_id": self.slice.slice_id,
                "session": self.session_id, "step": self.step, "token": self.token, "detail": self.detail,
                "claimed_vs_reference": self.claimed_vs_reference, "proven_vs_reference": self.proven_vs_reference,
                "tolerance": self.tolerance, "input_quanta": self.input_quanta, "proof": self.proof, "claimed_output": self.claimed_output,
                "signature": self.signature, "seconds": round(self.seconds, 3), "trace_layer": self.trace_layer}


class ZkAuditor:
    """Challenges a node for a slice proof after a disagreement and judges the answer.

    ``registry``: the pre-registered slices (their vks derived from the manifest's artifacts) — the
    candidates a challenge draws from. ``deadline_s``: how long a node has to answer (network + proving).
    ``secret``: seeds the slice and position draw (default random; pass the audit beacon's secret so that
    the draw can be checked after the reveal). ``tracer``: the bisection step run before the proof
    (default: a :class:`TraceAuditor` with the same deadline; ``trace=False``: none). ``model_dir`` (set by
    :meth:`for_slices` / :meth:`sampled`): lets a dispute register, on demand, a slice of a located layer
    that has none registered (its vk derived from the committed artifact like any registered slice).
    """

    def __init__(self, registry: VkRegistry, *, deadline_s: float = 60.0, secret: bytes | None = None,
                 post: Post = http_post, tracer: TraceAuditor | None = None, trace: bool = True,
                 model_dir: ModelDir | None = None, config: ZkConfig | None = None,
                 matrices: Sequence[str] = DISPUTE_MATRICES) -> None:
        self.registry = registry
        self.deadline_s = deadline_s
        self.secret = secret if secret is not None else os.urandom(32)
        self.post = post
        self.tracer = tracer if tracer is not None else (TraceAuditor(deadline_s=deadline_s, post=post) if trace else None)
        self.model_dir = model_dir
        self.config = config
        self.matrices = tuple(matrices)

    @classmethod
    def for_slices(cls, model_dir: ModelDir, specs: Sequence[SliceSpec], *, config: ZkConfig | None = None,
                   **kw: Any) -> ZkAuditor:
        """Register ``specs`` (vks built from the committed artifacts, cached) and return an auditor over them."""
        registry = VkRegistry()
        for spec in specs:
            register_slice(model_dir, spec, config=config, registry=registry)
        return cls(registry, model_dir=model_dir, config=config, **kw)

    @classmethod
    def sampled(cls, model_dir: ModelDir, per_shard: int, *, seed: bytes, matrices: Sequence[str] = DISPUTE_MATRICES,
                config: ZkConfig | None = None, **kw: Any) -> ZkAuditor:
        """Pre-register ``per_shard`` slices drawn (reproducibly, from ``seed``) from every shard's matrices.

        The registered set is the verifier's published menu (``registry.to_json()``); a dispute draws from it.
        Default matrices take the hidden state as input (one 16-row slice: hidden → 16 rows), the cheapest
        circuits of a shard."""
        manifest = model_dir.manifest
        specs: list[SliceSpec] = []
        for shard in manifest.shards:
            cands = all_slices(manifest, shard.index, matrices=matrices)
            specs += sample_slices(cands, min(per_shard, len(cands)), seed=seed + shard.index.to_bytes(4, "big"))
        return cls.for_slices(model_dir, specs, config=config, matrices=matrices, **kw)

    def candidates(self, manifest_hash: str, shard_index: int) -> list[SliceSpec]:
        return sorted((e.spec for e in self.registry if e.spec.shard == shard_index and e.spec.manifest_hash == manifest_hash),
                      key=lambda s: s.slice_id)

    def draw(self, records: Sequence[HopRecord], step: int, *, layer: int | None = None,
             token: int | None = None) -> tuple[SliceSpec, int] | None:
        """The slice and absolute position to prove for a disputed step (None: no slice registered for the shard).

        ``layer``/``token``: where the trace located the fault; the slice is drawn among that layer's
        slices (registered on demand if none is) and proven at that token."""
        r = records[step].receipt
        cands = self.candidates(r.manifest_hash, r.shard_index)
        seed = keccak(self.secret + bytes.fromhex(r.receipt_id()[2:]))
        if layer is not None:
            in_layer = [c for c in cands if c.layer == layer] or self._register_in_layer(r.shard_index, layer, seed)
            cands = in_layer or cands  # none could be registered: a random registered slice, as without a trace
        if not cands:
            return None
        spec = sample_slices(cands, 1, seed=seed)[0]
        if token is None or not r.start_pos <= token < r.start_pos + r.num_tokens:
            token = r.start_pos + int.from_bytes(keccak(seed), "big") % r.num_tokens
        return spec, token

    def _register_in_layer(self, shard: int, layer: int, seed: bytes) -> list[SliceSpec]:
        """Register one slice of ``layer`` (drawn from ``seed``) when the menu has none there; [] if impossible."""
        if self.model_dir is None:
            return []
        try:
            cands = [c for c in all_slices(self.model_dir.manifest, shard, matrices=self.matrices) if c.layer == layer]
            if not cands:
                return []
            spec = sample_slices(cands, 1, seed=seed)[0]
            register_slice(self.model_dir, spec, config=self.config, registry=self.registry)
        except (ProofError, OSError, RuntimeError, ValueError) as exc:
            log.error("could not register a slice of layer %d on demand: %s", layer, exc)
            return []
        log.info("registered %s on demand for a dispute located in layer %d", spec.describe(), layer)
        return [spec]

    def challenge(self, shard: ShardModel, records: Sequence[HopRecord], step: int, *,
                  trace: TraceEvidence | None = None) -> ZkEvidence | None:
        """Ask the node that served ``records`` for a proof of a registered slice of step ``step``: in the
        layer ``trace`` located (at its token), else a random one.

        ``records``: the node's session on one shard, steps 0.. in order, structurally checked (as
        re-execution leaves them). Returns None when no slice of that shard is registered."""
        located = trace is not None and trace.status == "located" and trace.step == step
        layer = trace.layer if located and trace is not None else None
        drawn = self.draw(records, step, layer=layer, token=trace.position if located and trace is not None else None)
        if drawn is None:
            log.warning("no zk slice registered for shard %d: dispute without a proof", records[step].receipt.shard_index)
            return None
        spec, token = drawn
        trace_layer = layer if spec.layer == layer else None
        rec = records[step]
        t0 = time.perf_counter()
        x_ref, y_ref = slice_io(shard, spec, session_hidden(records, step), token=token)

        def result(status: str, detail: str = "", **kw: Any) -> ZkEvidence:
            ev = ZkEvidence(status, spec, rec.receipt.session_id, step, token, detail, seconds=time.perf_counter() - t0,
                            trace_layer=trace_layer, **kw)
            (log.info if status == "valid" else log.warning)("node %s: %s", rec.node_address, ev.summary())
            return ev

        frames = [r.input_frame for r in records[: step + 1]]
        request = ProveRequest(slice=spec.to_dict(), session_id=rec.receipt.session_id, step=step, token=token,
                               input_hashes=[r.receipt.input_hash for r in records[: step + 1]],
                               frame_bytes=[len(f) for f in frames], nonce="0x" + os.urandom(32).hex())
        url = rec.node_url.rstrip("/") + PROVE_PATH
        raw, why = ask_node(self.post, url, encode_prove_request(request, frames), self.deadline_s,
                            refused="node refused to prove", noun="proof")
        if raw is None:
            return result("missing", why)
        try:
            resp = decode_prove_response(raw)
        except ProtocolError as exc:
            return result("invalid", f"malformed answer: {exc.message}")
        claimed = [float(v) for v in resp.claimed_output]
        signed: dict[str, Any] = {"proof": resp.proof, "claimed_output": claimed, "signature": resp.signature}
        try:
            signer = claim_signer(claim_digest(request, resp.proof, claimed), resp.signature)
        except ProtocolError as exc:
            return result("invalid", exc.message, **signed)
        if signer.lower() != rec.node_address.lower():
            return result("invalid", f"claim signed by {signer}, not by the node {rec.node_address}", **signed)
        diff = (float(np.abs(np.asarray(claimed) - y_ref).max()) if len(claimed) == spec.rows else None)
        measures: dict[str, Any] = {"claimed_vs_reference": diff}
        try:
            proof = SliceProof.from_json(resp.proof)
            entry = self.registry.get(spec)
            slack = 1.0
            if entry is not None:
                slack = max(1.0, INPUT_REL_SLACK * float(np.linalg.norm(x_ref)) * float(1 << entry.circuit.scale))
            if (entry is not None and proof.scale == entry.circuit.scale and len(proof.outputs) == spec.rows
                    and len(proof.input_q) == x_ref.shape[0]):
                proven = proof.output_values(entry.circuit.output_scale)
                deviation = float(np.abs(np.asarray(proof.input_q, dtype=np.float64) - x_ref * float(1 << proof.scale)).max())
                measures["proven_vs_reference"] = float(np.abs(proven - y_ref).max())
                measures["input_quanta"] = deviation
                measures["tolerance"] = float(tolerance(entry.bound, x_ref, entry.circuit.scale,
                                                        input_quanta=min(deviation, slack)).max())
            verify_slice(spec, proof, x_ref, claimed, self.registry, reference_output=y_ref, input_slack=slack)
        except ProofError as exc:
            return result("invalid", str(exc), **signed, **measures)
        except (RuntimeError, ValueError, OverflowError) as exc:  # ezkl refusing the node's numbers (e.g. commit)
            return result("invalid", f"malformed proof: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                          **signed, **measures)
        return result("valid", **signed, **measures)
