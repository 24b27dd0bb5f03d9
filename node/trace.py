"""``POST /v1/trace``: this node's signed per-layer transcript of a disputed hop (verifier/trace.py).

A verifier whose re-execution disagreed with this node sends the session's committed inputs on this shard
(steps 0..step, each frame hash-checked against the ``inputHash`` of the node's own receipts), the disputed
receipt's id and one or more positions of that step. The node re-runs its shard over those inputs as one
prefill with a hook on every decoder layer and answers the hidden state after each layer at those
positions (fp32 frames), with its signature over ``zkwire.trace_digest`` (challenge + sha256 of each
layer's frame). The verifier holds the last layer against the receipt's signed output and locates the first
layer whose output is not that layer of its input. Traces share the proofs' lock: one at a time per node.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

import torch
from aiohttp import web

from veriswarm.errors import ErrorCode, ProtocolError
from veriswarm.frames import encode_tensor
from veriswarm.verifier.trace import layer_outputs
from veriswarm.zkwire import (
    TRACE_PATH,
    TraceResponse,
    decode_trace_request,
    encode_trace_response,
    sign_claim,
    trace_digest,
)

from .app import STATE, NodeState, _check_target
from .prove import PROVE_LOCK, _hidden, dispute_body

log = logging.getLogger("veriswarm.node.trace")


def transcript(st: NodeState, hidden: torch.Tensor, positions: list[int]) -> list[bytes]:
    """One fp32 frame [1, P, H] per layer of the shard: its output at ``positions``."""
    idx = torch.tensor(positions)
    return [encode_tensor(out[:, idx].contiguous(), torch.float32) for out in layer_outputs(st.shard, hidden)]


async def trace(request: web.Request) -> web.Response:
    st = request.app[STATE]
    req, frames = decode_trace_request(await dispute_body(request, "trace", TRACE_PATH))
    _check_target(st, req.manifest_hash, req.shard)
    hidden = _hidden(st, frames)
    # The disputed step is the last frame sent: only its positions are under dispute.
    last = hidden.shape[1] - int(_hidden(st, frames[-1:]).shape[1])
    outside = [p for p in req.positions if not last <= p < hidden.shape[1]]
    if outside:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"position {outside[0]} is not in step {req.step} "
                                                   f"(positions {last}..{hidden.shape[1] - 1})")
    async with request.app[PROVE_LOCK]:
        layer_frames = await asyncio.get_running_loop().run_in_executor(None, transcript, st, hidden, list(req.positions))
    hashes = ["0x" + hashlib.sha256(f).hexdigest() for f in layer_frames]
    signature = sign_claim(trace_digest(req, st.shard.layer_start, hashes), st.private_key)
    body = TraceResponse(layer_start=st.shard.layer_start, layer_hashes=hashes, frame_bytes=[len(f) for f in layer_frames],
                         signature=signature)
    log.info("traced step %d of session %s at %s", req.step, req.session_id[:10], list(req.positions))
    return web.Response(body=encode_trace_response(body, layer_frames), content_type="application/octet-stream")


def add_trace_route(app: web.Application) -> None:
    """Register ``POST /v1/trace`` (called by ``add_prove_route``, which sets up the shared lock)."""
    app.router.add_post(TRACE_PATH, trace)


__all__ = ["TRACE_PATH", "add_trace_route", "trace", "transcript"]
