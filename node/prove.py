"""``POST /v1/prove``: prove a pre-registered slice of this node's computation for a disputed hop.

A verifier whose re-execution disagreed with this node sends the session's committed inputs on this shard
(steps 0..step, each frame hash-checked against the node's own receipts' ``inputHash``), a slice and a
position. The node re-runs its shard over those inputs as one prefill, takes the slice matrix's input
vector ``x`` and output rows ``y`` at that position, proves ``y = W[rows]·x`` with ezkl against the
weights *it runs* (for a dense matrix: the rows of its loaded module; a node serving other weights than
the manifest's therefore produces a proof under another verifying key, which the verifier rejects), and
signs the claim (see ``veriswarm.zkwire``). Proofs are serialised: one at a time per node.
"""

from __future__ import annotations

import asyncio
import json
import logging

import numpy as np
import torch
from aiohttp import web
from torch import nn

from veriswarm.errors import ErrorCode, ProtocolError
from veriswarm.frames import decode_tensor
from veriswarm.manifest import ModelDir
from veriswarm.protocol import PROTOCOL_VERSION, VERSION_HEADER
from veriswarm.verifier.zk import ProofError, SliceProof, SliceSpec, SliceWeights, ZkConfig, extract_slice_weights, prove_slice
from veriswarm.verifier.zk.slices import _module, slice_io, split_matrix
from veriswarm.zkwire import CALLER_HEADER, PROVE_PATH, ProveRequest, ProveResponse, claim_digest, decode_prove_request, sign_claim

from .app import STATE, WIRE_DTYPES, NodeState, _check_target
from .zkauth import ZkCallers, staking_verifiers

log = logging.getLogger("veriswarm.node.prove")
PROVE_LOCK = web.AppKey("prove_lock", asyncio.Lock)
ZK_CONFIG = web.AppKey("zk_config", ZkConfig)
ZK_CALLERS = web.AppKey("zk_callers", ZkCallers)


def node_slice_weights(st: NodeState, spec: SliceSpec) -> SliceWeights:
    """The slice's weights as this node runs them: a dense matrix's rows from the loaded module; low-rank
    factors from the (hash-checked) shard artifact."""
    module = _module(st.shard, spec)
    if split_matrix(spec.matrix)[1] is None and isinstance(module, nn.Linear):
        rows = slice(spec.row_start, spec.row_end)
        if spec.row_end > module.weight.shape[0]:
            raise ProofError(f"rows {spec.row_start}:{spec.row_end} are outside {spec.matrix}'s {module.weight.shape[0]} rows")
        w = module.weight.detach()[rows].to(torch.float32).numpy()
        b = None if module.bias is None else module.bias.detach()[rows].to(torch.float32).numpy()
        return SliceWeights(spec, (w,), b, str(module.weight.dtype).removeprefix("torch."))
    return extract_slice_weights(ModelDir.open(st.config.model_dir), spec)


def _hidden(st: NodeState, frames: list[bytes]) -> torch.Tensor:
    size = st.manifest.config.hidden_size
    parts = []
    for k, frame in enumerate(frames):
        x = decode_tensor(frame, max_bytes=st.config.max_body_bytes, dtypes=WIRE_DTYPES)
        if x.dim() != 3 or x.shape[0] != 1 or x.shape[2] != size or x.shape[1] < 1:
            raise ProtocolError(ErrorCode.BAD_SHAPE, f"frame {k} must have shape [1, T>=1, {size}], got {list(x.shape)}")
        parts.append(x.to(torch.float32))
    hidden = torch.cat(parts, dim=1)
    if hidden.shape[1] > st.config.max_length:
        raise ProtocolError(ErrorCode.CONTEXT_OVERFLOW, f"{hidden.shape[1]} positions exceed max_length {st.config.max_length}")
    return hidden


def _prove(st: NodeState, spec: SliceSpec, hidden: torch.Tensor, token: int, config: ZkConfig) -> tuple[SliceProof, np.ndarray]:
    x, y = slice_io(st.shard, spec, hidden, token=token)
    return prove_slice(spec, node_slice_weights(st, spec), x, config=config), y


async def dispute_body(request: web.Request, kind: str, path: str) -> bytes:
    """What every dispute endpoint does first: protocol version, metrics, the body, and who is asking."""
    if request.headers.get(VERSION_HEADER) != PROTOCOL_VERSION:
        raise ProtocolError(ErrorCode.PROTOCOL_VERSION, f"send {VERSION_HEADER}: {PROTOCOL_VERSION}")
    request.app[STATE].metrics.requests.labels(kind).inc()
    raw = await request.read()
    await request.app[ZK_CALLERS].authorize(request.headers.get(CALLER_HEADER), path, raw)
    return raw


async def prove(request: web.Request) -> web.Response:
    st = request.app[STATE]
    req, frames = decode_prove_request(await dispute_body(request, "prove", PROVE_PATH))
    try:
        spec = SliceSpec.from_dict(req.slice)
    except ProofError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"invalid slice: {exc}") from None
    _check_target(st, spec.manifest_hash, spec.shard)
    hidden = _hidden(st, frames)
    if req.token >= hidden.shape[1]:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"token {req.token} is outside the {hidden.shape[1]} positions sent")
    async with request.app[PROVE_LOCK]:
        try:
            proof, claimed = await asyncio.get_running_loop().run_in_executor(
                None, _prove, st, spec, hidden, req.token, request.app[ZK_CONFIG])
        except ProofError as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"cannot prove {spec.describe()}: {exc}") from None
    proof_json = proof.to_json()
    rows = [float(v) for v in claimed.tolist()]
    signature = sign_claim(claim_digest(req, proof_json, rows), st.private_key)
    log.info("proved %s at token %d in %.2fs", spec.describe(), req.token, proof.prove_seconds)
    body = ProveResponse(proof=proof_json, claimed_output=rows, signature=signature)
    return web.Response(body=json.dumps(body.model_dump(mode="json")), content_type="application/json")


def add_prove_route(app: web.Application, config: ZkConfig | None = None) -> None:
    """Register the dispute endpoints on a node app (before it starts): ``POST /v1/prove`` and
    ``POST /v1/trace`` (node/trace.py, the per-layer transcript that narrows a dispute to one layer first).
    Keys and SRS come from ``config``'s caches (default: ``$VERISWARM_ZK_CACHE`` / ``$VERISWARM_SRS_DIR``);
    nothing is downloaded."""
    from .trace import add_trace_route  # imported here: trace.py imports this module

    app[PROVE_LOCK] = asyncio.Lock()
    app[ZK_CONFIG] = config or ZkConfig()
    cfg = app[STATE].config
    allowed = {v.strip() for v in cfg.zk_verifiers.split(",") if v.strip()}
    app[ZK_CALLERS] = ZkCallers(allowed, on_chain=staking_verifiers(cfg.deployment) if cfg.deployment else None)
    if app[ZK_CALLERS].open:
        log.warning("/v1/prove and /v1/trace answer anyone (set zk_verifiers, or run with a deployment)")
    app.router.add_post(PROVE_PATH, prove)
    add_trace_route(app)


__all__ = ["PROVE_PATH", "ProveRequest", "add_prove_route", "node_slice_weights", "prove"]
