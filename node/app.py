"""The aiohttp application that serves one shard.

Routes: ``GET /v1/info``, ``GET /health``, ``GET /metrics``, ``POST /v1/forward`` (stateless) and
``GET /v1/ws`` (stateful sessions with a KV cache). Every error becomes a status code in exactly
one place (:func:`error_middleware` for HTTP, :func:`_ws_error` for WebSocket messages).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property

import torch
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from veriswarm import __version__
from veriswarm.errors import HTTP_STATUS, ErrorCode, ProtocolError
from veriswarm.frames import DTYPE_NAMES, decode_tensor, encode_tensor, sha256
from veriswarm.manifest import Manifest, ShardSpec
from veriswarm.protocol import (
    PROTOCOL_VERSION,
    VERSION_HEADER,
    Closed,
    CloseSession,
    ForwardRequest,
    NodeInfo,
    Opened,
    OpenSession,
    StepRequest,
    decode_request,
    encode_envelope,
    error_reply,
    result_reply,
)
from veriswarm.receipts import Receipt, ReceiptDomain, address_of, context_seed, hex32, next_context, now_ms
from veriswarm.split.modeling import ShardModel

from .config import NodeConfig
from .metrics import NodeMetrics
from .sessions import Session, SessionStore

log = logging.getLogger("veriswarm.node")
WIRE_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16})
_VERSIONED = {"/v1/forward", "/v1/ws"}


@dataclass
class NodeState:
    config: NodeConfig
    manifest: Manifest
    spec: ShardSpec
    shard: ShardModel
    private_key: bytes
    domain: ReceiptDomain
    sessions: SessionStore
    metrics: NodeMetrics
    semaphore: asyncio.Semaphore
    executor: ThreadPoolExecutor | None = None
    websockets: weakref.WeakSet[web.WebSocketResponse] = field(default_factory=weakref.WeakSet)

    @property
    def manifest_hash(self) -> str:
        return self.manifest.hash

    @cached_property
    def address(self) -> str:
        return address_of(self.private_key)


STATE = web.AppKey("state", NodeState)


def _error_response(code: ErrorCode, message: str) -> web.Response:
    return web.json_response({"error": {"code": code.value, "message": message}}, status=HTTP_STATUS[code])


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        if request.path in _VERSIONED:
            got = request.headers.get(VERSION_HEADER)
            if got != PROTOCOL_VERSION:
                raise ProtocolError(ErrorCode.PROTOCOL_VERSION,
                                    f"protocol version {got!r} is not supported (this node speaks {PROTOCOL_VERSION})")
        return await handler(request)
    except ProtocolError as exc:
        state.metrics.errors.labels(exc.code.value).inc()
        return _error_response(exc.code, exc.message)
    except web.HTTPRequestEntityTooLarge:
        state.metrics.errors.labels(ErrorCode.TOO_LARGE.value).inc()
        return _error_response(ErrorCode.TOO_LARGE, f"request body exceeds {state.config.max_body_bytes} bytes")
    except web.HTTPException as exc:
        if exc.status >= 400:
            code = ErrorCode.NOT_FOUND if exc.status == 404 else ErrorCode.BAD_REQUEST
            return web.json_response({"error": {"code": code.value, "message": exc.reason}}, status=exc.status)
        raise
    except Exception:
        log.exception("internal error on %s", request.path)
        state.metrics.errors.labels(ErrorCode.INTERNAL.value).inc()
        return _error_response(ErrorCode.INTERNAL, "internal error (see the node's log)")


def _hidden_from(state: NodeState, payload: memoryview) -> torch.Tensor:
    x = decode_tensor(payload, max_bytes=state.config.max_body_bytes, dtypes=WIRE_DTYPES)
    hidden = state.manifest.config.hidden_size
    if x.dim() != 3 or x.shape[0] != 1 or x.shape[2] != hidden or x.shape[1] < 1:
        raise ProtocolError(ErrorCode.BAD_SHAPE,
                            f"hidden states must have shape [1, T>=1, {hidden}], got {list(x.shape)}")
    return x


async def _run_hop(state: NodeState, x: torch.Tensor, in_frame: bytes, *, session_id: str, step: int,
                   start_pos: int, nonce: str, prev_context: bytes, session: Session | None) -> tuple[bytes, Receipt]:
    loop = asyncio.get_running_loop()
    cache = session.cache if session is not None else None
    async with state.semaphore:
        t0 = time.perf_counter()
        out = await loop.run_in_executor(state.executor, state.shard.forward, x.to(torch.float32), start_pos, cache)
        state.metrics.step_seconds.observe(time.perf_counter() - t0)
    out_frame = encode_tensor(out.to(x.dtype))
    input_hash = sha256(in_frame)
    context = next_context(prev_context, input_hash)
    receipt = Receipt(
        manifest_hash=state.manifest_hash, shard_index=state.spec.index, session_id=session_id, step=step,
        start_pos=start_pos, num_tokens=int(x.shape[1]), input_hash=hex32(input_hash),
        context_hash=hex32(context), output_hash=hex32(sha256(out_frame)), request_nonce=nonce,
        timestamp_ms=now_ms(),
    ).signed(state.private_key, state.domain)
    if session is not None:
        session.context = context
        session.next_step = step + 1
    state.metrics.tokens.inc(int(x.shape[1]))
    return out_frame, receipt


def _check_target(state: NodeState, manifest_hash: str, shard_index: int) -> None:
    if manifest_hash != state.manifest_hash:
        raise ProtocolError(ErrorCode.MANIFEST_MISMATCH,
                            f"this node serves manifest {state.manifest_hash}, not {manifest_hash}")
    if shard_index != state.spec.index:
        raise ProtocolError(ErrorCode.WRONG_SHARD, f"this node serves shard {state.spec.index}, not {shard_index}")


async def info(request: web.Request) -> web.Response:
    st = request.app[STATE]
    body = NodeInfo(
        protocol_version=PROTOCOL_VERSION, software_version=__version__, manifest_hash=st.manifest_hash,
        model_name=st.manifest.model_name, shard_index=st.spec.index, num_shards=len(st.manifest.shards),
        layer_start=st.spec.layer_start, layer_end=st.spec.layer_end, address=st.address,
        wire_dtypes=sorted(n for n, d in DTYPE_NAMES.items() if d in WIRE_DTYPES),
        max_length=st.config.max_length, max_sessions=st.config.max_sessions,
        free_sessions=st.sessions.free_slots, chain_id=st.domain.chain_id,
        verifying_contract=st.domain.verifying_contract,
    )
    return web.json_response(body.model_dump())


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "sessions": len(request.app[STATE].sessions)})


async def metrics(request: web.Request) -> web.Response:
    st = request.app[STATE]
    st.metrics.sessions.set(len(st.sessions))
    return web.Response(body=generate_latest(st.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def forward(request: web.Request) -> web.Response:
    st = request.app[STATE]
    st.metrics.requests.labels("forward").inc()
    body = await request.read()
    req, payload = decode_request(body)
    if not isinstance(req, ForwardRequest):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"POST /v1/forward takes a forward request, not {req.type!r}")
    _check_target(st, req.manifest_hash, req.shard_index)
    x = _hidden_from(st, payload)
    if x.shape[1] > st.config.max_length:
        raise ProtocolError(ErrorCode.CONTEXT_OVERFLOW, f"{x.shape[1]} positions exceed max_length {st.config.max_length}")
    seed = context_seed(st.manifest_hash, st.spec.index, req.session_id)
    out_frame, receipt = await _run_hop(st, x, bytes(payload), session_id=req.session_id, step=0, start_pos=0,
                                        nonce=req.request_nonce, prev_context=seed, session=None)
    return web.Response(body=encode_envelope(result_reply(receipt), out_frame), content_type="application/octet-stream")


async def _ws_message(st: NodeState, owner: int, data: bytes) -> bytes:
    req, payload = decode_request(data)
    if isinstance(req, OpenSession):
        st.metrics.requests.labels("open").inc()
        _check_target(st, req.manifest_hash, req.shard_index)
        if req.max_length > st.config.max_length:
            raise ProtocolError(ErrorCode.CONTEXT_OVERFLOW,
                                f"max_length {req.max_length} exceeds this node's limit of {st.config.max_length}")
        st.sessions.open(req.session_id, st.shard.new_cache(req.max_length),
                         context_seed(st.manifest_hash, st.spec.index, req.session_id), owner)
        return encode_envelope(Opened(session_id=req.session_id, max_length=req.max_length))
    if isinstance(req, StepRequest):
        st.metrics.requests.labels("step").inc()
        session = st.sessions.get(req.session_id, owner)
        async with session.lock:
            if req.step != session.next_step:
                raise ProtocolError(ErrorCode.STEP_OUT_OF_ORDER, f"step {req.step} sent, expected {session.next_step}")
            if req.start_pos != session.cache.length:
                raise ProtocolError(ErrorCode.STEP_OUT_OF_ORDER,
                                    f"start_pos {req.start_pos} sent, but the session holds {session.cache.length} positions")
            x = _hidden_from(st, payload)
            if req.start_pos + x.shape[1] > session.max_length:
                raise ProtocolError(ErrorCode.CONTEXT_OVERFLOW,
                                    f"{req.start_pos + x.shape[1]} positions exceed the session's max_length {session.max_length}")
            out_frame, receipt = await _run_hop(
                st, x, bytes(payload), session_id=req.session_id, step=req.step, start_pos=req.start_pos,
                nonce=req.request_nonce, prev_context=session.context, session=session)
        return encode_envelope(result_reply(receipt), out_frame)
    if isinstance(req, CloseSession):
        st.sessions.close(req.session_id, owner)
        return encode_envelope(Closed(session_id=req.session_id))
    raise ProtocolError(ErrorCode.BAD_REQUEST, f"{req.type!r} is not a session message (use POST /v1/forward)")


def _ws_error(st: NodeState, exc: ProtocolError, data: bytes | None) -> bytes:
    st.metrics.errors.labels(exc.code.value).inc()
    session_id = step = None
    if data is not None:
        try:
            req, _ = decode_request(data)
            session_id = getattr(req, "session_id", None)
            step = getattr(req, "step", None)
        except ProtocolError:
            pass
    return encode_envelope(error_reply(exc, session_id=session_id, step=step))


async def websocket(request: web.Request) -> web.WebSocketResponse:
    st = request.app[STATE]
    ws = web.WebSocketResponse(max_msg_size=st.config.max_body_bytes, heartbeat=30.0)
    await ws.prepare(request)
    owner = id(ws)
    st.websockets.add(ws)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                try:
                    reply = await _ws_message(st, owner, msg.data)
                except ProtocolError as exc:
                    reply = _ws_error(st, exc, msg.data)
                except Exception:
                    log.exception("internal error on a session message")
                    reply = _ws_error(st, ProtocolError(ErrorCode.INTERNAL, "internal error (see the node's log)"), None)
                await ws.send_bytes(reply)
            elif msg.type == WSMsgType.TEXT:
                err = ProtocolError(ErrorCode.BAD_FRAME, "send binary envelopes, not text")
                await ws.send_bytes(_ws_error(st, err, None))
            elif msg.type == WSMsgType.ERROR:
                log.info("websocket closed with error: %s", ws.exception())
                break
    finally:
        st.sessions.close_owned_by(owner)
    return ws


def make_app(*, config: NodeConfig, manifest: Manifest, shard: ShardModel, private_key: bytes) -> web.Application:
    spec = manifest.shard(config.shard)
    state = NodeState(
        config=config, manifest=manifest, spec=spec, shard=shard, private_key=private_key,
        domain=ReceiptDomain(config.chain_id, config.verifying_contract.lower()),
        sessions=SessionStore(max_sessions=config.max_sessions, memory_bytes=config.cache_memory_bytes,
                              idle_timeout_s=config.session_idle_timeout_s),
        metrics=NodeMetrics.create(), semaphore=asyncio.Semaphore(config.max_concurrency),
    )
    # Leave room for the envelope's header around the largest frame.
    app = web.Application(client_max_size=config.max_body_bytes + 64 * 1024, middlewares=[error_middleware])
    app[STATE] = state
    app.router.add_get("/v1/info", info)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/forward", forward)
    app.router.add_get("/v1/ws", websocket)
    app.cleanup_ctx.append(_executor_ctx)
    app.cleanup_ctx.append(_reaper_ctx)
    app.on_shutdown.append(_close_websockets)
    return app


async def _executor_ctx(app: web.Application) -> AsyncIterator[None]:
    st = app[STATE]
    st.executor = ThreadPoolExecutor(max_workers=st.config.max_concurrency, thread_name_prefix="shard-forward")
    yield
    st.executor.shutdown(wait=True, cancel_futures=True)


async def _reaper_ctx(app: web.Application) -> AsyncIterator[None]:
    st = app[STATE]

    async def reap() -> None:
        interval = max(0.05, min(5.0, st.config.session_idle_timeout_s / 4))
        while True:
            await asyncio.sleep(interval)
            if n := st.sessions.reap_idle():
                log.info("expired %d idle session(s)", n)

    task = asyncio.create_task(reap())
    yield
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def _close_websockets(app: web.Application) -> None:
    for ws in list(app[STATE].websockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"node shutting down")
