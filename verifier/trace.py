"""Narrow a disputed hop down to one layer before the zk proof: the per-layer transcript and its bisection.

After re-execution disagrees with a node on step ``s`` of a session, the verifier asks the node
(``POST /v1/trace`` on the URL the hop was served from) for its **transcript** at the disputed
position(s) ``p``: the hidden state after each decoder layer of its shard, ``T[1..L]`` (fp32), computed
over the session's committed inputs on that shard (steps 0..s, hash-checked against the node's receipts).
The node signs ``trace_digest`` (the challenge with the disputed receipt id and positions, and the sha256 of
each layer's frame), so the transcript is the node's own, attributable statement.

The verifier then

1. checks the signature is the node's, the transcript covers exactly the shard's layers at the positions
   asked, in fp32;
2. checks the transcript **ends at the signed output**: ``T[L]`` at ``p`` against the receipt's output
   frame at ``p``, within the hop's wire tolerance (``tolerance.TOLERANCE``). ``T[0]`` is the committed
   input itself (the verifier has it). So both ends are pinned to what the receipt chain commits to;
3. finds the first layer ``l`` whose claimed output is not what layer ``l`` computes from the claimed input
   ``T[l]``: the single-layer check ``T[l+1][p] ≈ layer_l(context, T[l][p])``. Attention at ``p`` reads
   the layer's input at every earlier position, which the transcript does not carry; the verifier takes
   them from its own honest re-execution (one prefill of the shard with a hook on every layer), so each
   check runs one layer over that honest input with only position ``p`` replaced by the node's claim.
   Because ``T[0]`` is right and ``T[L]`` is (by step 2) the output the re-execution rejected, a
   transcript whose every layer passes the check cannot exist unless the node's error is spread in
   pieces each under the per-layer tolerance; then nothing is located (``consistent``) and the dispute
   falls back to the random slice draw. This is the bisection's predicate evaluated at every layer: with
   the whole transcript in hand, checking all ``L`` layers costs one layer-forward each, and the per-layer
   numbers go into the evidence.

``LAYER_TOLERANCE`` is the per-layer bound, relative L2 at one position (measured, see below and
docs/verification.md).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

from veriswarm.errors import ProtocolError
from veriswarm.frames import DTYPE_NAMES, decode_tensor, frame_wire
from veriswarm.protocol import PROTOCOL_VERSION, VERSION_HEADER
from veriswarm.sinks import HopRecord
from veriswarm.split.modeling import ShardModel
from veriswarm.zkwire import (
    MAX_TRACE_POSITIONS,
    TRACE_PATH,
    TraceRequest,
    claim_signer,
    decode_trace_response,
    encode_trace_request,
    trace_digest,
)

from .tolerance import TOLERANCE

log = logging.getLogger("veriswarm.verifier.trace")
MAX_FRAME = 256 * 1024 * 1024
#: Per-layer bound on ‖claimed T[l+1] − layer_l(T[l])‖ / ‖layer_l(T[l])‖ at one position. Measured honest
#: noise: real tiny-model node processes (1 thread) vs. the verifier (2 threads), every step of two
#: sessions: ≤ 5.4e-7; SmolLM2-135M (4 shards, 61 positions), transcript from a 1-thread process checked in a
#: 2-thread and a 1-thread process: 0.0 (docs/verification.md). 1e-5 is ~18× above the worst honest value
#: and 10× below the hop's fp32 tolerance (1e-4), so a fault that fails the hop cannot hide in one layer.
LAYER_TOLERANCE = 1e-5

#: a transcript is layers × positions × hidden fp32 values: SmolLM2's shards (≤ 8 layers × 576) are ~18 KB a
#: position; this caps what a verifier reads from a node
MAX_RESPONSE = 64 * 1024 * 1024

#: (url, body, timeout_s) -> response body; raises OSError (urllib's errors) on failure
Post = Callable[[str, bytes, float], bytes]


def post_bytes(url: str, body: bytes, timeout_s: float, *, max_bytes: int, headers: dict[str, str] | None = None) -> bytes:
    """POST a dispute request to a node; the answer is read up to ``max_bytes`` (OSError beyond)."""
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={VERSION_HEADER: PROTOCOL_VERSION, "Content-Type": "application/octet-stream",
                                          **(headers or {})})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        data: bytes = resp.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(f"response from {urlparse(url).path} exceeds {max_bytes} bytes")
    return data


def http_post(url: str, body: bytes, timeout_s: float) -> bytes:
    return post_bytes(url, body, timeout_s, max_bytes=MAX_RESPONSE)


def error_text(exc: urllib.error.HTTPError) -> str:
    """The node's one-line error (``code: message``) from an HTTP error reply."""
    try:
        body = json.loads(exc.read(64 * 1024) or b"{}")
        err = body.get("error", {}) if isinstance(body, dict) else {}
        return f"{err.get('code', '?')}: {err.get('message', '')}"[:300]
    except (ValueError, OSError):
        return exc.reason if isinstance(exc.reason, str) else "error"


def ask_node(post: Post, url: str, body: bytes, deadline_s: float, *, refused: str, noun: str) -> tuple[bytes | None, str]:
    """POST a dispute request: (the answer, "") or (None, why it did not come) — a refusal or nothing within
    the deadline, which the caller counts as the node's answer missing."""
    try:
        return post(url, body, deadline_s), ""
    except urllib.error.HTTPError as exc:
        return None, f"{refused}: HTTP {exc.code}: {error_text(exc)}"
    except (OSError, TimeoutError) as exc:  # URLError, timeouts, resets
        return None, f"no {noun} within {deadline_s:g}s: {type(exc).__name__}: {exc}"


def session_hidden(records: Sequence[HopRecord], step: int) -> torch.Tensor:
    """The committed inputs of steps 0..step as one [1, P, H] float32 prefill (what re-execution runs)."""
    parts = [decode_tensor(r.input_frame, max_bytes=MAX_FRAME, dtypes=frozenset(DTYPE_NAMES.values())).to(torch.float32)
             for r in records[: step + 1]]
    return torch.cat(parts, dim=1)


def layer_outputs(shard: ShardModel, hidden: torch.Tensor) -> list[torch.Tensor]:
    """Run ``shard`` (its forward as this process has it) over ``hidden`` [1, T, H] and return the output of
    every decoder layer, [1, T, H] float32 each, captured by forward hooks.

    The node uses this for its transcript and the verifier for its honest per-layer values: one code path.
    A layer the forward did not run leaves the hidden state unchanged (its entry repeats the previous one):
    that is what such a forward computed, so the transcript stays truthful about it."""
    seen: dict[int, torch.Tensor] = {}
    me = threading.get_ident()
    handles = []

    def hook_for(i: int) -> Callable[[nn.Module, Any, torch.Tensor], None]:
        def hook(_m: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            # Only this call's pass: a node runs other sessions' forwards through the same modules concurrently.
            if threading.get_ident() == me:
                seen[i] = output.detach().to(torch.float32).clone()
        return hook

    layers = list(shard.layers)
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(hook_for(i)))
    try:
        shard(hidden.to(torch.float32))
    finally:
        for h in handles:
            h.remove()
    outs, x = [], hidden.to(torch.float32)
    for i in range(len(layers)):
        x = seen.get(i, x)
        outs.append(x)
    return outs


@torch.inference_mode()
def single_layer_errors(shard: ShardModel, hidden: torch.Tensor, honest: Sequence[torch.Tensor],
                        claimed: Sequence[torch.Tensor], positions: Sequence[int]) -> np.ndarray:
    """Relative L2 error of each claimed layer output against that layer applied to the claimed input, [L, P].

    ``hidden`` [1, T, H]: the committed input; ``honest``: :func:`layer_outputs` of the verifier's shard;
    ``claimed``: the node's transcript, one [P, H] tensor per layer. Layer ``i`` is run over the layer's
    whole input from the honest run with only position ``p`` replaced by the node's claimed input
    (``T[i]``; ``T[0]`` is the committed input): attention at ``p`` needs the earlier positions, which the
    transcript does not carry, and causality keeps the later ones from touching ``p``. Running the full
    length (not 0..p) is the very computation the node's prefill did, so honest runs on one machine agree
    to the last bit; a truncated run differed by up to 7.8e-7 (other kernel blocking)."""
    errors = np.zeros((len(claimed), len(positions)), dtype=np.float64)
    inputs = [hidden.to(torch.float32), *honest[:-1]]
    cos, sin = shard.rotary(torch.arange(hidden.shape[1]), torch.float32)
    for j, p in enumerate(positions):
        for i, layer in enumerate(shard.layers):
            x = inputs[i].clone()
            if i > 0:
                x[0, p] = claimed[i - 1][j]
            y = layer(x, cos, sin, 0, None, i)[0, p]
            errors[i, j] = _rel(claimed[i][j], y)
    return errors


def _rel(claimed: torch.Tensor, reference: torch.Tensor) -> float:
    return float((claimed - reference).norm() / reference.norm().clamp_min(1e-6))


@dataclass(frozen=True)
class TraceEvidence:
    """What the bisection step found; kept in the verdict (numbers, hashes) and the slash evidence (+ frames)."""

    status: str  # "located" | "consistent" | "invalid" | "missing"
    session_id: str
    step: int
    receipt_id: str
    positions: list[int]
    layer_start: int
    detail: str = ""
    #: absolute index of the first layer whose claimed output is not that layer of its claimed input
    layer: int | None = None
    #: the position at which ``layer`` was located (the one the zk proof should target)
    position: int | None = None
    tolerance: float = LAYER_TOLERANCE
    #: [layer][position]: single-layer check T[l+1] vs layer_l(T[l]); and T[l+1] vs the honest run
    layer_errors: list[list[float]] | None = None
    prefix_errors: list[list[float]] | None = None
    #: T[L] vs the receipt's output frame at the positions (max), and the hop's wire tolerance
    end_error: float | None = None
    end_tolerance: float | None = None
    request: dict[str, Any] | None = None
    layer_hashes: list[str] = field(default_factory=list)
    signature: str = ""
    frames: list[bytes] = field(default_factory=list, repr=False)
    seconds: float = 0.0

    @property
    def failing(self) -> bool:
        """A located fault is the node's own signed admission; a bad or missing transcript counts like a
        missing proof. ``consistent`` locates nothing (the dispute goes on with a random slice)."""
        return self.status != "consistent"

    def summary(self) -> str:
        if self.status == "located":
            return f"trace: fault located in layer {self.layer} at token {self.position}"
        if self.status == "consistent":
            return "trace: every layer consistent within tolerance, fault not located"
        return f"trace {self.status.upper()}: {self.detail}"

    def to_json(self, *, frames: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status, "session": self.session_id, "step": self.step, "receipt_id": self.receipt_id,
            "positions": list(self.positions), "layer_start": self.layer_start, "layer": self.layer,
            "position": self.position, "detail": self.detail, "tolerance": self.tolerance,
            "layer_errors": self.layer_errors, "prefix_errors": self.prefix_errors, "end_error": self.end_error,
            "end_tolerance": self.end_tolerance, "request": self.request, "layer_hashes": list(self.layer_hashes),
            "signature": self.signature, "seconds": round(self.seconds, 3)}
        if frames:  # the signed transcript itself, so a third party can redo the checks
            out["frames"] = [base64.b64encode(f).decode() for f in self.frames]
        return out


class TraceAuditor:
    """Asks a node for its signed per-layer transcript of a disputed step and locates the first faulty layer.

    ``positions``: how many positions of the step to trace (the worst ones by the verifier's re-execution).
    ``deadline_s``: how long the node has to answer. ``tolerance``: the per-layer bound."""

    def __init__(self, *, deadline_s: float = 60.0, positions: int = 1, tolerance: float = LAYER_TOLERANCE,
                 post: Post = http_post) -> None:
        if not 1 <= positions <= MAX_TRACE_POSITIONS:
            raise ValueError(f"trace 1..{MAX_TRACE_POSITIONS} positions, not {positions}")
        self.deadline_s = deadline_s
        self.positions = positions
        self.tolerance = tolerance
        self.post = post

    def challenge(self, shard: ShardModel, records: Sequence[HopRecord], step: int) -> TraceEvidence:
        """Trace step ``step`` of ``records`` (one node's session on one shard, structurally checked, as
        re-execution leaves them) and judge the answer."""
        t0 = time.perf_counter()
        rec = records[step]
        r = rec.receipt
        hidden = session_hidden(records, step)
        honest = layer_outputs(shard, hidden)
        output = decode_tensor(rec.output_frame, max_bytes=MAX_FRAME, dtypes=frozenset(DTYPE_NAMES.values())).to(torch.float32)
        step_ref = honest[-1][0, r.start_pos:r.start_pos + r.num_tokens]
        hop_errors = (output[0] - step_ref).norm(dim=-1) / step_ref.norm(dim=-1).clamp_min(1e-6)
        # The positions where the hop is most wrong: where a faulty layer shows most clearly.
        worst = torch.argsort(hop_errors, descending=True)[: self.positions]
        positions = sorted(r.start_pos + int(k) for k in worst)
        frames = [x.input_frame for x in records[: step + 1]]
        request = TraceRequest(manifest_hash=r.manifest_hash, shard=r.shard_index, session_id=r.session_id, step=step,
                               receipt_id=r.receipt_id(), positions=positions,
                               input_hashes=[x.receipt.input_hash for x in records[: step + 1]],
                               frame_bytes=[len(f) for f in frames], nonce="0x" + os.urandom(32).hex())
        base: dict[str, Any] = {"session_id": r.session_id, "step": step, "receipt_id": r.receipt_id(),
                                "positions": positions, "layer_start": shard.layer_start, "tolerance": self.tolerance,
                                "request": request.model_dump(mode="json")}

        def result(status: str, detail: str = "", **kw: Any) -> TraceEvidence:
            ev = TraceEvidence(status, detail=detail, seconds=time.perf_counter() - t0, **base, **kw)
            (log.info if status == "consistent" else log.warning)("node %s: %s", rec.node_address, ev.summary())
            return ev

        url = rec.node_url.rstrip("/") + TRACE_PATH
        raw, why = ask_node(self.post, url, encode_trace_request(request, frames), self.deadline_s,
                            refused="node refused the trace", noun="trace")
        if raw is None:
            return result("missing", why)
        try:
            resp, layer_frames = decode_trace_response(raw)
        except ProtocolError as exc:
            return result("invalid", f"malformed answer: {exc.message}")
        signed: dict[str, Any] = {"layer_hashes": list(resp.layer_hashes), "signature": resp.signature,
                                  "frames": layer_frames}
        try:
            signer = claim_signer(trace_digest(request, resp.layer_start, list(resp.layer_hashes)), resp.signature)
        except ProtocolError as exc:
            return result("invalid", exc.message, **signed)
        if signer.lower() != rec.node_address.lower():
            return result("invalid", f"transcript signed by {signer}, not by the node {rec.node_address}", **signed)
        if resp.layer_start != shard.layer_start or len(layer_frames) != shard.num_layers:
            return result("invalid", f"transcript covers layers {resp.layer_start}..{resp.layer_start + len(layer_frames) - 1}, "
                                     f"the shard has {shard.layer_start}..{shard.layer_end - 1}", **signed)
        size = shard.cfg.hidden_size
        claimed: list[torch.Tensor] = []
        for k, frame in enumerate(layer_frames):
            try:  # fp32 only: a transcript in a lossy format could not be held to the per-layer tolerance
                t = decode_tensor(frame, max_bytes=MAX_FRAME, dtypes=frozenset({torch.float32}))
            except ProtocolError as exc:
                return result("invalid", f"layer frame {k}: {exc.message}", **signed)
            if tuple(t.shape) != (1, len(positions), size):
                return result("invalid", f"layer frame {k} has shape {list(t.shape)}, expected [1, {len(positions)}, {size}]",
                              **signed)
            claimed.append(t[0])
        # Pin the far end: the transcript must end at the output the receipt signed (T[0] is the committed input).
        idx = torch.tensor([p - r.start_pos for p in positions])
        signed_out = output[0, idx]
        end = float(((claimed[-1] - signed_out).norm(dim=-1) / signed_out.norm(dim=-1).clamp_min(1e-6)).max())
        end_tol = TOLERANCE[frame_wire(rec.output_frame)]
        signed.update(end_error=end, end_tolerance=end_tol)
        if end > end_tol:
            return result("invalid", f"transcript does not end at the receipt's output: relative error {end:.2e} > {end_tol:.0e}",
                          **signed)
        errors = single_layer_errors(shard, hidden, honest, claimed, positions)
        prefix = np.array([[_rel(claimed[i][j], honest[i][0, p]) for j, p in enumerate(positions)]
                           for i in range(len(claimed))])
        signed.update(layer_errors=errors.tolist(), prefix_errors=prefix.tolist())
        bad = np.argwhere(errors > self.tolerance)
        if len(bad) == 0:
            return result("consistent", f"worst single-layer error {errors.max():.2e} <= {self.tolerance:.0e}", **signed)
        i = int(bad[:, 0].min())
        j = int(np.argmax(errors[i]))
        return result("located", f"layer {shard.layer_start + i}: claimed output off by {errors[i, j]:.2e} relative "
                                 f"from that layer applied to the claimed input (tolerance {self.tolerance:.0e})",
                      layer=shard.layer_start + i, position=positions[j], **signed)
