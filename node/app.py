"""The aiohttp application that serves one shard.

Routes: ``GET /v1/info``, ``GET /health``, ``GET /metrics``, ``POST /v1/forward`` (stateless) and
``GET /v1/ws`` (stateful sessions with a KV cache). Every error becomes a status code in exactly
one place (:func:`error_middleware` for HTTP, :func:`_ws_error` for WebSocket messages).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from veriswarm import __version__
from veriswarm.errors import HTTP_STATUS, ErrorCode, ProtocolError, ReceiptError
from veriswarm.frames import DTYPE_NAMES, Q8, decode_tensor, encode_tensor, frame_dims, frame_wire, sha256
from veriswarm.manifest import Manifest, ShardSpec
from veriswarm.protocol import (
    PROTOCOL_VERSION,
    VERSION_HEADER,
    AnyRequest,
    Closed,
    CloseSession,
    ForwardRequest,
    LinkAccepted,
    LinkChallenge,
    LinkHello,
    LinkProof,
    NodeInfo,
    Opened,
    OpenSession,
    RelayResult,
    RelayStep,
    RelayTick,
    SetUpstream,
    StepRequest,
    decode_relay_tick,
    decode_request,
    encode_envelope,
    error_reply,
    is_relay_tick,
    link_digest,
    result_reply,
)
from veriswarm.receipts import (
    Receipt,
    ReceiptDomain,
    address_of,
    context_seed,
    digest_signer,
    hex32,
    next_context,
    now_ms,
)
from veriswarm.split.kvcache import KVCache
from veriswarm.split.modeling import ShardModel

from .config import NodeConfig
from .metrics import NodeMetrics
from .relay import RelayLinks
from .sessions import PinnedRoute, Session, SessionStore

log = logging.getLogger("veriswarm.node")
WIRE_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16, Q8})
_VERSIONED = {"/v1/forward", "/v1/ws"}
#: a push this small to a connection with nothing unsent is written at once (see _push)
DIRECT_PUSH_BYTES = 16 * 1024
#: bytes of pushes a connection may leave unread before it is dropped (its client has stopped reading)
MAX_UNREAD_PUSH_BYTES = 16 * 1024 * 1024
#: hands a relayed hop's output to the next node
Onward = Callable[[bytes], Awaitable[None]]


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
    #: forwards running in threads of their own (see _in_own_thread): joined at shutdown, as the executor is
    own_threads: set[threading.Thread] = field(default_factory=set)
    relay: RelayLinks | None = None
    #: open WebSocket connections by owner id: a relayed step's result or failure is pushed to the
    #: connection that owns the session (the client), whichever connection the step arrived on
    connections: dict[int, Connection] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    #: intra-op threads for (decode, prefill) forwards; the decode count is the process's own at start
    threads: tuple[int, int] = (1, 1)

    @property
    def manifest_hash(self) -> str:
        return self.manifest.hash

    @cached_property
    def address(self) -> str:
        return address_of(self.private_key)


STATE = web.AppKey("state", NodeState)


@dataclass
class Connection:
    """One WebSocket to this node: a client's (it owns the sessions it opens) or another node's relay link,
    which proves its node key once (:func:`_link_message`) and is then trusted to hand over steps for
    the sessions whose client named that key as upstream."""

    ws: web.WebSocketResponse
    transport: asyncio.Transport | None = None
    #: pushes handed to tasks and not yet written (see _push): later pushes queue behind them
    queued_pushes: int = 0
    challenge: str | None = None
    peer: str | None = None  # lower-case address, once proven

    @property
    def owner(self) -> int:
        """The id sessions opened on this connection are owned by."""
        return id(self.ws)


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


async def _compute(state: NodeState, x: torch.Tensor, in_frame: bytes, start_pos: int,
                   session: Session | None) -> bytes:
    """The forward pass behind the semaphore, off the event loop (but see NodeConfig.inline_decode); the
    output frame in the wire format received (q8 decodes to fp32)."""
    loop = asyncio.get_running_loop()
    cache = session.cache if session is not None else None
    if x.dtype != torch.float32:  # fp16/bf16 wire; fp32 (and q8, decoded to fp32) is used as it is
        x = x.float()
    async with state.semaphore:
        t0 = time.perf_counter()
        if _decodes_inline(state, int(x.shape[1])):
            out = state.shard.forward(x, start_pos, cache)
        elif x.shape[1] > 1 and _decodes_inline(state, 1):
            out = await _in_own_thread(state, _worker_forward, state, state.threads[1], x, start_pos, cache)
        else:
            threads = state.threads[1] if x.shape[1] > 1 else state.threads[0]
            out = await loop.run_in_executor(state.executor, _worker_forward, state, threads, x,
                                             start_pos, cache)
        state.metrics.step_seconds.observe(time.perf_counter() - t0)
    state.metrics.tokens.inc(int(x.shape[1]))
    return encode_tensor(out, frame_wire(in_frame))


async def _in_own_thread(state: NodeState, fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    """``fn(*args)`` in a thread that ends with it: a prefill, when decodes run on the event loop.

    Why not the executor: libgomp keeps a pool of OpenMP threads for every thread that has run a
    parallel region, for the life of that thread, and once a process holds more of them than there are
    cores it lets idle pool threads spin only ~100 rounds before sleeping. A decode runs dozens of short
    parallel regions (split matmuls, see split.modeling.rows_linear); with a sleeping team each one waits
    for a futex wake-up, which made SmolLM2's 8-layer decode forward 8.6–9.0 ms at 2 threads instead of 5.3
    (two processes taking turns, one persistent prefill thread each). A thread that ends frees its pool."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[torch.Tensor] = loop.create_future()

    def settle(result: torch.Tensor | None, error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the awaiting coroutine, raised there
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)
        finally:
            state.own_threads.discard(threading.current_thread())

    thread = threading.Thread(target=run, name="shard-prefill", daemon=True)
    state.own_threads.add(thread)
    thread.start()
    return await done


def _worker_forward(state: NodeState, threads: int, x: torch.Tensor, start_pos: int, cache: KVCache | None) -> torch.Tensor:
    """The forward in a worker thread, at ``threads`` intra-op threads. torch's count is per thread
    (a worker does not see the main thread's), but MKL's is process-wide: it is put back to the decode
    count after, so that an inline decode on the event loop never runs with a prefill's thread team."""
    torch.set_num_threads(threads)
    try:
        return state.shard.forward(x, start_pos, cache)
    finally:
        torch.set_num_threads(state.threads[0])


def _attest(state: NodeState, in_frame: bytes, out_frame: bytes, *, session_id: str, step: int, start_pos: int,
            num_tokens: int, nonce: str, prev_context: bytes, session: Session | None) -> Receipt:
    """Sign what this node computed, and move the session on to its next step."""
    input_hash = sha256(in_frame)
    context = next_context(prev_context, input_hash)
    receipt = Receipt(
        manifest_hash=state.manifest_hash, shard_index=state.spec.index, session_id=session_id, step=step,
        start_pos=start_pos, num_tokens=num_tokens, input_hash=hex32(input_hash),
        context_hash=hex32(context), output_hash=hex32(sha256(out_frame)), request_nonce=nonce,
        timestamp_ms=now_ms(),
    ).signed(state.private_key, state.domain)
    if session is not None:
        session.context = context
        session.next_step = step + 1
    return receipt


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
        wire_dtypes=sorted(n for n, d in DTYPE_NAMES.items() if d in WIRE_DTYPES), relay=st.config.relay,
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
    in_frame = bytes(payload)
    out_frame = await _compute(st, x, in_frame, 0, None)
    receipt = _attest(st, in_frame, out_frame, session_id=req.session_id, step=0, start_pos=0,
                      num_tokens=int(x.shape[1]), nonce=req.request_nonce, prev_context=seed, session=None)
    return web.Response(body=encode_envelope(result_reply(receipt), out_frame), content_type="application/octet-stream")


async def _session_step(st: NodeState, session: Session, *, step: int, start_pos: int, nonce: str,
                        payload: memoryview | bytes, onward: Onward | None = None) -> tuple[bytes, Receipt]:
    """Run one ordered step of a session under its lock. The same request sent again right after it
    was done (same step, nonce and input) gets the same signed answer instead of an ordering error:
    that is what lets a client recover from a relay that broke without knowing how far it got.

    ``onward`` (relay) gets the output before the receipt is signed: the next node starts computing
    while this one signs."""
    in_frame = bytes(payload)
    async with session.lock:
        last = session.last
        if (last is not None and step == session.next_step - 1 and nonce == last[0]
                and hex32(sha256(in_frame)) == last[1].input_hash):
            return last[2], last[1]
        if step != session.next_step:
            raise ProtocolError(ErrorCode.STEP_OUT_OF_ORDER, f"step {step} sent, expected {session.next_step}")
        if start_pos != session.cache.length:
            raise ProtocolError(ErrorCode.STEP_OUT_OF_ORDER,
                                f"start_pos {start_pos} sent, but the session holds {session.cache.length} positions")
        x = _hidden_from(st, memoryview(in_frame))
        if start_pos + x.shape[1] > session.max_length:
            raise ProtocolError(ErrorCode.CONTEXT_OVERFLOW,
                                f"{start_pos + x.shape[1]} positions exceed the session's max_length {session.max_length}")
        out_frame = await _compute(st, x, in_frame, start_pos, session)
        try:
            if onward is not None:
                await onward(out_frame)
        finally:
            # The KV cache has moved on: whatever became of the send, the step is done here and signed,
            # so that the client's retry of it gets this same answer.
            receipt = _attest(st, in_frame, out_frame, session_id=session.session_id, step=step,
                              start_pos=start_pos, num_tokens=int(x.shape[1]), nonce=nonce,
                              prev_context=session.context, session=session)
            session.last = (nonce, receipt, out_frame)
        return out_frame, receipt


async def _ws_message(st: NodeState, owner: int, req: AnyRequest, payload: memoryview, t0: float) -> bytes:
    if isinstance(req, OpenSession):
        st.metrics.requests.labels("open").inc()
        _check_target(st, req.manifest_hash, req.shard_index)
        if req.max_length > st.config.max_length:
            raise ProtocolError(ErrorCode.CONTEXT_OVERFLOW,
                                f"max_length {req.max_length} exceeds this node's limit of {st.config.max_length}")
        if req.upstream is not None and not st.config.relay:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "this node does not take part in relay (relay = false)")
        st.sessions.open(req.session_id, st.shard.new_cache(req.max_length),
                         context_seed(st.manifest_hash, st.spec.index, req.session_id), owner,
                         req.upstream.lower() if req.upstream else None)
        return encode_envelope(Opened(session_id=req.session_id, max_length=req.max_length))
    if isinstance(req, StepRequest):
        st.metrics.requests.labels("step").inc()
        session = st.sessions.get(req.session_id, owner)
        out_frame, receipt = await _session_step(st, session, step=req.step, start_pos=req.start_pos,
                                                 nonce=req.request_nonce, payload=payload)
        reply = encode_envelope(result_reply(receipt), out_frame)
        st.metrics.hop_seconds.observe(time.perf_counter() - t0)
        return reply
    if isinstance(req, SetUpstream):
        session = st.sessions.get(req.session_id, owner)
        session.upstream = req.upstream.lower() if req.upstream else None
        return encode_envelope(Opened(session_id=req.session_id, max_length=session.max_length))
    if isinstance(req, CloseSession):
        st.sessions.close(req.session_id, owner)
        return encode_envelope(Closed(session_id=req.session_id))
    raise ProtocolError(ErrorCode.BAD_REQUEST, f"{req.type!r} is not a session message (use POST /v1/forward)")


async def _relay_step(st: NodeState, conn: Connection, req: RelayStep, payload: memoryview) -> None:
    """Do this node's hop of a relayed step: pass the output on to the next node (or, as the last hop,
    to the client) first, then push the signed receipt to the client; pin the route for the relay
    ticks that follow. Errors are pushed to the session's owner by the caller."""
    st.metrics.requests.labels("relay").inc()
    _check_relays(st)
    hop = req.hop
    if hop >= len(req.orders):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"relayed step names hop {hop} of a {len(req.orders)}-hop chain")
    order = req.orders[hop]
    if order.shard_index != st.spec.index or order.address.lower() != st.address.lower():
        raise ProtocolError(ErrorCode.WRONG_SHARD, f"relayed hop {hop} is for shard {order.shard_index} at "
                                                   f"{order.address}, this is shard {st.spec.index} at {st.address}")
    session, owner = _relayed_session(st, conn, req.session_id, hop)
    nxt = req.orders[hop + 1] if hop + 1 < len(req.orders) else None
    session.route = PinnedRoute(hop, len(req.orders), nxt.url if nxt else None, nxt.address if nxt else None)
    # The next hop's envelope does not depend on the output: built now, not while the token waits.
    onward = encode_envelope(RelayStep(session_id=req.session_id, orders=req.orders, hop=hop + 1)) if nxt else b""
    await _relay_hop(st, session, owner, step=order.step, start_pos=order.start_pos, nonce=order.request_nonce,
                     next_step=nxt.step if nxt else None, onward=onward, payload=payload)


async def _relay_tick(st: NodeState, conn: Connection, tick: RelayTick, payload: memoryview) -> None:
    """A relayed step on the route the session's last full RelayStep pinned here (see RelayTick)."""
    st.metrics.requests.labels("relay_tick").inc()
    _check_relays(st)
    session, owner = _relayed_session(st, conn, tick.session_id, tick.hop)
    route = session.route
    if route is None or route.hop != tick.hop or route.hops != tick.hops:
        pinned = f"hop {route.hop} of {route.hops}" if route is not None else "none"
        raise ProtocolError(ErrorCode.RELAY_FAILED, f"relay tick refused at shard {st.spec.index}: it names hop "
                                                    f"{tick.hop} of {tick.hops}, the route pinned here is {pinned} "
                                                    "(a full relayed step pins it)")
    await _relay_hop(st, session, owner, step=tick.step, start_pos=tick.start_pos, nonce=tick.request_nonce,
                     next_step=tick.next_step, onward=tick.onward() if route.next_url else b"", payload=payload)


def _check_relays(st: NodeState) -> None:
    if not st.config.relay:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "this node does not take part in relay (relay = false)")


def _relayed_session(st: NodeState, conn: Connection, session_id: str, hop: int) -> tuple[Session, Connection]:
    """The session a relayed step (full or tick) is for, if it came from whom it may come from, and the
    connection of the client it belongs to."""
    session = st.sessions.relayed(session_id)
    if hop == 0:
        # The first hop takes the step only from the client that opened the session.
        if conn.owner != session.owner:
            raise ProtocolError(ErrorCode.RELAY_FAILED, f"relayed step refused at shard {st.spec.index}: hop 0 "
                                                        "must come from the session's owner")
    elif session.upstream is None:
        raise ProtocolError(ErrorCode.RELAY_FAILED, f"relayed step refused at shard {st.spec.index}: this session "
                                                    "was opened without an upstream node, it takes no relayed steps")
    elif conn.peer != session.upstream:
        # The client named, when it opened the session, the one node that may hand it steps; the link
        # proved its key once, when it was opened (LinkProof).
        who = f"a link authenticated as {conn.peer}" if conn.peer else "a link that never authenticated"
        raise ProtocolError(ErrorCode.RELAY_FAILED, f"relayed step refused at shard {st.spec.index}: it came over "
                                                    f"{who}, but the client named {session.upstream} as upstream")
    owner = st.connections.get(session.owner)
    if owner is None or owner.ws.closed:
        raise ProtocolError(ErrorCode.RELAY_FAILED, "the client's connection is gone")
    return session, owner


async def _relay_hop(st: NodeState, session: Session, owner: Connection, *, step: int, start_pos: int, nonce: str,
                     next_step: int | None, onward: bytes, payload: memoryview) -> None:
    """Run the step; its output frame goes on after ``onward`` (the next hop's message header) to the
    pinned route's next hop, or, as the last hop, with the receipt to the client."""
    route = session.route
    assert route is not None  # pinned by the caller's full step, or checked by its tick
    send_on: Onward | None = None
    if route.next_url is not None and route.next_address is not None and next_step is not None:
        relay = st.relay
        assert relay is not None  # created by the app's cleanup context before any request
        url, address = route.next_url, route.next_address

        async def send_on(out_frame: bytes) -> None:
            await relay.send(url, onward + out_frame, session_id=session.session_id, step=next_step, address=address)

    out_frame, receipt = await _session_step(st, session, step=step, start_pos=start_pos, nonce=nonce,
                                             payload=payload, onward=send_on)
    await _push(st, owner, encode_envelope(RelayResult(session_id=session.session_id, hop=route.hop,
                                                       receipt=receipt.to_json()), out_frame))


async def _relay_task(st: NodeState, conn: Connection, req: RelayStep | RelayTick, payload: memoryview, t0: float) -> None:
    try:
        if isinstance(req, RelayTick):
            await _relay_tick(st, conn, req, payload)
        else:
            await _relay_step(st, conn, req, payload)
        st.metrics.hop_seconds.observe(time.perf_counter() - t0)
    except ProtocolError as exc:
        await _push_error(st, req, exc, conn)
    except Exception:
        log.exception("internal error on a relayed step")
        await _push_error(st, req, ProtocolError(ErrorCode.INTERNAL, "internal error (see the node's log)"), conn)


async def _push_error(st: NodeState, req: RelayStep | RelayTick, exc: ProtocolError, sender: Connection) -> None:
    """Tell the client that owns the session why its relayed step stopped here; with no session here,
    tell the node that sent it (it tells its own client: see RelayLinks.on_refused)."""
    st.metrics.errors.labels(exc.code.value).inc()
    log.info("relayed step for session %s… stopped at shard %d: %s", req.session_id[:18], st.spec.index, exc.message)
    if isinstance(req, RelayTick):
        step: int | None = req.step
    else:
        step = req.orders[req.hop].step if req.hop < len(req.orders) else None
    message = encode_envelope(error_reply(exc, session_id=req.session_id, step=step))
    try:
        owner = st.sessions.relayed(req.session_id).owner
    except ProtocolError:
        await _push(st, sender, message)
        return
    conn = st.connections.get(owner)
    if conn is not None:
        await _push(st, conn, message)


async def _push(st: NodeState, conn: Connection, message: bytes) -> None:
    """Push a message to a connection without ever waiting on its reader: a relayed step may be handled
    in the read loop of the link it came over (see _inline_relay), and a client that stops reading
    must not stall that link for every other session on it. While the connection holds unsent data
    (or earlier pushes wait in tasks), the push goes to a task, in order; otherwise aiohttp writes it
    to the socket at once (it waits only once the transport is paused, which a small write to an
    empty buffer never makes it). A connection that leaves MAX_UNREAD_PUSH_BYTES unread is dropped."""
    if conn.ws.closed or (conn.transport is not None and conn.transport.is_closing()):
        return
    unsent = conn.transport.get_write_buffer_size() if conn.transport is not None else 0
    if unsent > MAX_UNREAD_PUSH_BYTES and conn.transport is not None:
        # Dropped, not closed politely: a close handshake would wait on the very reader that stopped.
        log.warning("dropping a connection that has left %d bytes of pushes unread", unsent)
        conn.transport.abort()
        return
    if conn.queued_pushes or unsent or len(message) > DIRECT_PUSH_BYTES:
        conn.queued_pushes += 1
        _spawn(st, _queued_push(conn, message))
        return
    await _send_or_drop(conn, message)


def _spawn(st: NodeState, work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` as a task the node keeps hold of (st.tasks: cancelled at shutdown)."""
    task = asyncio.create_task(work)
    st.tasks.add(task)
    task.add_done_callback(st.tasks.discard)


async def _queued_push(conn: Connection, message: bytes) -> None:
    try:
        await _send_or_drop(conn, message)
    finally:
        conn.queued_pushes -= 1


async def _send_or_drop(conn: Connection, message: bytes) -> None:
    try:
        if not conn.ws.closed:
            await conn.ws.send_bytes(message)
    except (ConnectionError, RuntimeError) as exc:  # the client went away: there is no one to tell
        log.info("push to a closed connection dropped: %s", exc)


async def _refused_downstream(st: NodeState, session_id: str, step: int | None, reason: str) -> None:
    session = st.sessions.peek(session_id)
    if session is None:
        return
    conn = st.connections.get(session.owner)
    if conn is not None:
        err = ProtocolError(ErrorCode.RELAY_FAILED, reason)
        await _push(st, conn, encode_envelope(error_reply(err, session_id=session_id, step=step)))


def _link_message(st: NodeState, conn: Connection, req: LinkHello | LinkProof) -> bytes:
    if isinstance(req, LinkHello):
        conn.challenge = hex32(os.urandom(32))
        return encode_envelope(LinkChallenge(address=st.address, nonce=conn.challenge))
    challenge, conn.challenge = conn.challenge, None  # one proof per challenge
    if challenge is None:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "link proof without a challenge: send link_hello first")
    try:
        signer = digest_signer(link_digest(st.address, challenge), req.signature, what="link proof")
    except ReceiptError as exc:
        raise ProtocolError(ErrorCode.FORBIDDEN, str(exc)) from None
    if signer.lower() != req.address.lower():
        raise ProtocolError(ErrorCode.FORBIDDEN, f"link proof signed by {signer}, not by {req.address}")
    conn.peer = signer.lower()
    return encode_envelope(LinkAccepted(address=signer))


def _decodes_inline(st: NodeState, positions: int) -> bool:
    """Whether a step runs on the event loop: a decode step, with nothing else allowed to compute (see
    NodeConfig.inline_decode)."""
    return positions == 1 and st.config.inline_decode and st.config.max_concurrency == 1


def _inline_relay(st: NodeState, payload: memoryview) -> bool:
    """Whether a relayed step will run on the event loop, judged from its frame's header (decode_tensor
    validates the frame when the step runs)."""
    dims = frame_dims(payload)
    return dims is not None and len(dims) == 3 and _decodes_inline(st, dims[1])


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
    conn = Connection(ws, request.transport)
    owner = conn.owner
    st.connections[owner] = conn
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                t0 = time.perf_counter()
                req: AnyRequest | RelayTick
                try:
                    req, payload = decode_relay_tick(msg.data) if is_relay_tick(msg.data) else decode_request(msg.data)
                except ProtocolError as exc:
                    await ws.send_bytes(_ws_error(st, exc, None))
                    continue
                if isinstance(req, RelayStep | RelayTick):
                    # No reply on this connection: the result goes on to the next node, and every
                    # node pushes its receipt to the client (or an error, when the step stops there).
                    if _inline_relay(st, payload):
                        # A decode step that will run on the event loop anyway: no task, no extra loop turn
                        # before its forward (a push to a client that stops reading never waits: _push).
                        await _relay_task(st, conn, req, payload, t0)
                        continue
                    _spawn(st, _relay_task(st, conn, req, payload, t0))
                    continue
                try:
                    if isinstance(req, LinkHello | LinkProof):
                        reply = _link_message(st, conn, req)
                    else:
                        reply = await _ws_message(st, owner, req, payload, t0)
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
        st.connections.pop(owner, None)
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
        threads=(torch.get_num_threads(), config.prefill_threads or torch.get_num_threads()),
    )
    # Leave room for the envelope's header around the largest frame.
    app = web.Application(client_max_size=config.max_body_bytes + 64 * 1024, middlewares=[error_middleware])
    app[STATE] = state
    app.router.add_get("/v1/info", info)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/forward", forward)
    app.router.add_get("/v1/ws", websocket)
    from .prove import add_prove_route  # imported here: prove.py imports this module

    add_prove_route(app)  # POST /v1/prove: zk slice proofs for disputed hops
    app.cleanup_ctx.append(_executor_ctx)
    app.cleanup_ctx.append(_relay_ctx)
    app.cleanup_ctx.append(_reaper_ctx)
    app.on_shutdown.append(_close_websockets)
    return app


async def _executor_ctx(app: web.Application) -> AsyncIterator[None]:
    st = app[STATE]
    st.executor = ThreadPoolExecutor(max_workers=st.config.max_concurrency, thread_name_prefix="shard-forward")
    yield
    st.executor.shutdown(wait=True, cancel_futures=True)
    for thread in list(st.own_threads):
        thread.join()
    st.own_threads.clear()


async def _relay_ctx(app: web.Application) -> AsyncIterator[None]:
    st = app[STATE]
    st.relay = RelayLinks(private_key=st.private_key, timeout_s=10.0, max_msg_bytes=st.config.max_body_bytes + 64 * 1024,
                          on_refused=lambda sid, step, why: _refused_downstream(st, sid, step, why))
    await st.relay.start()
    yield
    for task in list(st.tasks):
        task.cancel()
    await st.relay.close()


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
    for conn in list(app[STATE].connections.values()):
        await conn.ws.close(code=WSCloseCode.GOING_AWAY, message=b"node shutting down")
