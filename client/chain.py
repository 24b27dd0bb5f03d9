"""A session along the chain of shards: hidden states go node to node, every receipt is checked, and a
failing node is replaced mid-generation by another replica whose KV cache is rebuilt by replay."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

import aiohttp
import torch

from veriswarm.checks import Expected, check_receipt
from veriswarm.errors import ProtocolError, ReceiptError, RemoteError
from veriswarm.frames import DTYPE_NAMES, decode_tensor, encode_tensor
from veriswarm.protocol import ErrorReply, HopOrder, RelayResult, RelayStep, encode_envelope, encode_relay_tick
from veriswarm.receipts import Receipt, ReceiptDomain, context_seed, hex32
from veriswarm.sinks import HopRecord, ReceiptSink

from .routing import Router
from .transport import NodeLink, ResolvedPeer

log = logging.getLogger("veriswarm.client")


@dataclass
class Failover:
    shard: int
    from_url: str
    to_url: str
    reason: str
    position: int
    replayed_steps: int
    recovery_s: float


class _Orders(NamedTuple):
    """A relayed step's orders and its message to hop 0 (without the input frame), with what they assume."""

    key: tuple[object, ...]  # start position, each hop's step, each hop's node URL
    nonces: list[str]
    orders: list[HopOrder]
    envelope: bytes
    #: the same step as a relay tick, for a route already pinned on the nodes (protocol.RelayTick)
    tick: bytes
    #: who the hops are: the route a full step pins
    route: tuple[tuple[int, str, str], ...]


class _Checked(NamedTuple):
    """One relayed hop that passed the client's check (nothing committed yet)."""

    receipt: Receipt
    in_frame: bytes
    out_frame: bytes
    context: bytes
    out: torch.Tensor


@dataclass
class _Hop:
    shard_index: int
    candidates: list[ResolvedPeer]
    link: NodeLink | None = None
    step: int = 0
    context: bytes = b""
    #: every input frame this shard has been sent in this session, with its start position and shape
    history: list[tuple[bytes, int, tuple[int, ...]]] = field(default_factory=list)


class ChainSession:
    def __init__(self, http: aiohttp.ClientSession, plan: list[list[ResolvedPeer]], *, manifest_hash: str,
                 domain: ReceiptDomain, sink: ReceiptSink, router: Router | None = None, timeout_s: float = 30.0,
                 wire_dtype: str = "float32", max_frame_bytes: int = 256 * 1024 * 1024,
                 session_id: str | None = None, relay: bool = True, relay_max_frame_bytes: int = 1 << 20,
                 relay_grace_s: float = 2.0) -> None:
        if wire_dtype not in ("float32", "float16", "bfloat16", "q8"):  # q8: 8-bit, exact outliers (quant8.py)
            raise ValueError(f"wire dtype {wire_dtype!r} is not supported")
        self.http = http
        self.session_id = session_id or hex32(os.urandom(32))
        self.manifest_hash = manifest_hash
        self.domain = domain
        self.sink = sink
        self.router = router
        self.timeout_s = timeout_s
        self.wire_dtype = DTYPE_NAMES[wire_dtype]
        self.max_frame_bytes = max_frame_bytes
        self.hops = [_Hop(i, list(c)) for i, c in enumerate(plan)]
        self.position = 0
        self.max_length = 0
        self.failovers: list[Failover] = []
        #: server-to-server relay: asked for, and still trusted for this session (a relay that breaks
        #: its promise, by dropping or altering what it carries, turns it off)
        self.relay = relay and len(plan) > 1
        self.relay_max_frame_bytes = relay_max_frame_bytes
        self.relay_steps = 0
        self.relay_fallbacks: list[str] = []
        self._relay_breaks = 0
        #: the nonces of relayed steps given up on (settled by asking each node): only their results
        #: may still arrive late and be ignored; any other result that is not this step's is a bad relay
        self._abandoned: deque[str] = deque(maxlen=64 * max(1, len(plan)))
        #: once the last hop's result is in, how long the other hops' receipts may still take
        self.relay_grace_s = relay_grace_s
        #: the next relayed step's orders, built while this one computes (see _relayed_step)
        self._ready: _Orders | None = None
        #: the route every node of the chain has pinned, by the last relayed step, which went through:
        #: the next step on the same route is sent as a relay tick (None: send a full RelayStep)
        self._pinned: tuple[tuple[int, str, str], ...] | None = None
        #: relayed steps sent as ticks (the others, full RelayStep messages)
        self.relay_ticks = 0

    @property
    def route(self) -> list[str]:
        return [h.link.peer.url if h.link else "" for h in self.hops]

    def _ban(self, url: str, reason: str) -> None:
        if self.router is not None:
            self.router.ban(url, reason)

    async def _connect(self, hop: _Hop, *, exclude: set[str], last: str = "no candidates",
                       connected: NodeLink | RemoteError | None = None) -> None:
        """Open the session on the best remaining replica of this shard; ban the ones that fail.
        ``connected``: the first candidate's WebSocket, already opened (or why it could not be)."""
        for peer in hop.candidates:
            if peer.url in exclude:
                continue
            ready = connected if peer is hop.candidates[0] else None
            link = ready if isinstance(ready, NodeLink) else NodeLink(self.http, peer, self.timeout_s)
            try:
                if isinstance(ready, RemoteError):
                    raise ready
                await link.open(self.manifest_hash, hop.shard_index, self.session_id, self.max_length,
                                upstream=self._upstream_of(hop))
            except RemoteError as exc:
                last = str(exc)
                exclude.add(peer.url)
                self._ban(peer.url, last)
                await link.close()
                continue
            hop.link = link
            hop.context = context_seed(self.manifest_hash, hop.shard_index, self.session_id)
            hop.step = 0
            return
        raise RemoteError(f"shard {hop.shard_index}", "no_replica",
                          f"no live replica left for shard {hop.shard_index} (last failure: {last})")

    def _upstream_of(self, hop: _Hop) -> str | None:
        """The node key this hop may take relayed steps from: the previous hop's current node."""
        if not self.relay or hop.shard_index == 0:
            return None
        prev = self.hops[hop.shard_index - 1].link
        return prev.peer.address if prev is not None else None

    @property
    def relay_capable(self) -> bool:
        return self.relay and all(h.link is not None and h.link.peer.info.relay for h in self.hops)

    async def open(self, max_length: int) -> None:
        self.max_length = max_length
        # The WebSocket handshakes to every hop's first choice run side by side; the sessions then open in
        # chain order (each names the node chosen before it as its upstream), a failed one as usual.
        connected = await asyncio.gather(*(self._preconnect(hop) for hop in self.hops))
        for hop, link in zip(self.hops, connected, strict=True):
            await self._connect(hop, exclude=set(), connected=link)

    async def _preconnect(self, hop: _Hop) -> NodeLink | RemoteError | None:
        if not hop.candidates:
            return None
        link = NodeLink(self.http, hop.candidates[0], self.timeout_s)
        try:
            await link.connect()
        except RemoteError as exc:
            return exc
        return link

    def _verify(self, hop: _Hop, receipt: Receipt, frame: bytes, out_frame: bytes, *, step: int, start: int,
                nonce: str, shape: tuple[int, ...]) -> tuple[bytes, torch.Tensor]:
        """Check one hop's receipt and output (no state changes); return the new context and the output."""
        assert hop.link is not None
        url = hop.link.peer.url
        expected = Expected(address=hop.link.peer.address, manifest_hash=self.manifest_hash,
                            shard_index=hop.shard_index, session_id=self.session_id, step=step,
                            start_pos=start, num_tokens=shape[1], request_nonce=nonce, previous_context=hop.context)
        try:
            context = check_receipt(receipt, expected, frame, out_frame, self.domain)
            out = decode_tensor(out_frame, max_bytes=self.max_frame_bytes, dtypes=frozenset({self.wire_dtype}))
        except (ReceiptError, ProtocolError) as exc:
            raise ReceiptError(f"{url} (shard {hop.shard_index}): {exc}") from None
        if tuple(out.shape) != shape:
            raise ReceiptError(f"{url}: output shape {list(out.shape)} != input {list(shape)}")
        return context, out.to(torch.float32)

    def _commit(self, hop: _Hop, receipt: Receipt, frame: bytes, out_frame: bytes, context: bytes) -> None:
        assert hop.link is not None
        self.sink.submit(HopRecord(receipt, hop.link.peer.url, hop.link.peer.address, frame, out_frame))
        hop.context = context
        hop.step += 1

    async def _run(self, hop: _Hop, frame: bytes, start: int, shape: tuple[int, ...], nonce: str | None = None) -> torch.Tensor:
        """One checked step on the hop's current node; updates the hop's step and context."""
        assert hop.link is not None
        nonce = nonce or hex32(os.urandom(32))
        t0 = time.perf_counter()
        receipt, out_frame = await hop.link.step(self.session_id, hop.step, start, nonce, frame)
        context, out = self._verify(hop, receipt, frame, out_frame, step=hop.step, start=start, nonce=nonce, shape=shape)
        if self.router is not None:
            self.router.observe(hop.link.peer.url, time.perf_counter() - t0)
        self._commit(hop, receipt, frame, out_frame, context)
        return out

    async def _failover(self, hop: _Hop, failed: NodeLink, reason: str) -> None:
        """Replace a failed node: next replica, same session id, its KV cache rebuilt by replaying every
        input this shard has seen (same steps, same frames: the replica computes exactly what the
        failed node did)."""
        t0 = time.perf_counter()
        self._pinned = None  # the replica has no route pinned: the next relayed step pins it anew
        self._ban(failed.peer.url, reason)
        await failed.close()
        tried = {failed.peer.url}
        while True:
            await self._connect(hop, exclude=tried, last=reason)  # raises no_replica when none is left
            assert hop.link is not None
            try:
                for frame, start, shape in hop.history:
                    await self._run(hop, frame, start, shape)
            except (RemoteError, ReceiptError) as exc:
                tried.add(hop.link.peer.url)
                reason = f"failed during replay: {exc}"
                self._ban(hop.link.peer.url, reason)
                await hop.link.close()
                continue
            break
        await self._repoint_downstream(hop)
        event = Failover(hop.shard_index, failed.peer.url, hop.link.peer.url, reason, self.position,
                         len(hop.history), time.perf_counter() - t0)
        self.failovers.append(event)
        if self.router is not None:
            self.router.stats.failovers += 1
        log.warning("shard %d: failed over from %s to %s after %s (replayed %d steps in %.2fs)",
                    event.shard, event.from_url, event.to_url, reason, event.replayed_steps, event.recovery_s)

    async def _repoint_downstream(self, hop: _Hop) -> None:
        """The next hop must now take relayed steps from this hop's new node. If it can't be told,
        relay is off for the session (client-mediated steps need no upstream)."""
        if not self.relay or hop.shard_index + 1 >= len(self.hops):
            return
        nxt = self.hops[hop.shard_index + 1]
        if nxt.link is None:
            return
        try:
            await nxt.link.set_upstream(self.session_id, self._upstream_of(nxt))
        except RemoteError as exc:
            self._relay_off(f"could not re-point shard {nxt.shard_index}'s upstream: {exc}")

    def _relay_off(self, reason: str) -> None:
        if self.relay:
            log.warning("session %s…: relay off, client-mediated from now on: %s", self.session_id[:18], reason)
        self.relay = False
        self.relay_fallbacks.append(reason)

    def _orders_key(self, start: int, steps: list[int]) -> tuple[object, ...]:
        return start, tuple(steps), tuple(h.link.peer.url if h.link is not None else "" for h in self.hops)

    def _relay_orders(self, start: int, steps: list[int], nonces: list[str]) -> _Orders:
        orders = []
        for hop, step, nonce in zip(self.hops, steps, nonces, strict=True):
            assert hop.link is not None
            orders.append(HopOrder(shard_index=hop.shard_index, url=hop.link.peer.url, address=hop.link.peer.address,
                                   step=step, start_pos=start, request_nonce=nonce))
        return _Orders(self._orders_key(start, steps), nonces, orders,
                       encode_envelope(RelayStep(session_id=self.session_id, orders=orders, hop=0)),
                       encode_relay_tick(self.session_id, start, steps, nonces),
                       tuple((o.shard_index, o.url, o.address) for o in orders))

    async def step(self, hidden: torch.Tensor) -> torch.Tensor:
        """Run [1, T, H] hidden states for the next T positions through every shard."""
        start, shape = self.position, tuple(hidden.shape)
        frame = encode_tensor(hidden, self.wire_dtype)
        ready, self._ready = self._ready, None
        if ready is not None and ready.key != self._orders_key(start, [h.step for h in self.hops]):
            ready = None  # the chain changed since (a failover, a longer step): ordered afresh
        nonces = ready.nonces if ready is not None else [hex32(os.urandom(32)) for _ in self.hops]
        out: torch.Tensor | None = None
        if self.relay_capable and len(frame) <= self.relay_max_frame_bytes:
            out = await self._relayed_step(frame, start, shape, nonces, ready)
        if out is None:
            # Client-mediated, with the same nonces: a node that already did this step in a relay that
            # broke further on answers the same request with the same signed result.
            for hop, nonce in zip(self.hops, nonces, strict=True):
                while True:
                    link = hop.link
                    assert link is not None
                    try:
                        out = await self._run(hop, frame, start, shape, nonce)
                        break
                    except (RemoteError, ReceiptError) as exc:
                        await self._failover(hop, link, str(exc))
                hop.history.append((frame, start, shape))
                frame = encode_tensor(out, self.wire_dtype)
        assert out is not None
        self.position = start + shape[1]
        return out

    async def _relayed_step(self, frame: bytes, start: int, shape: tuple[int, ...], nonces: list[str],
                            ready: _Orders | None = None) -> torch.Tensor | None:
        """One step node to node: send it to the first hop; every hop pushes its receipt and output frame
        here, checked as they come (while later hops compute). Returns None (after saying why) when the
        relay broke: the caller then asks each node itself. ``ready``: this step's orders, built while
        the previous step computed."""
        relay = ready if ready is not None else self._relay_orders(start, [h.step for h in self.hops], nonces)
        orders = relay.orders
        first = self.hops[0].link
        assert first is not None
        t0 = time.perf_counter()
        tick = relay.route == self._pinned
        # Pinned again only if this step goes through; whatever fails on the way, the next is a full step.
        self._pinned = None
        try:
            await first.send((relay.tick if tick else relay.envelope) + frame)
            # While the nodes compute: the next step's orders, for a step that follows this one on the same
            # nodes (used only if that is what comes next; see step).
            self._ready = self._relay_orders(start + shape[1], [h.step + 1 for h in self.hops],
                                             [hex32(os.urandom(32)) for _ in self.hops])
            checked, arrived = await self._await_relay(orders, frame, start, shape)
        except ReceiptError as exc:
            self._abandoned.extend(nonces)
            # A node's receipt disagrees with what the hop before it handed on, or is missing: a relay
            # (or a node) broke its promise; stop trusting relays for this session.
            self._relay_off(f"relayed chain failed the client's check: {exc}")
            return None
        except RemoteError as exc:
            self._abandoned.extend(nonces)
            # A node died or could not reach the next one: ask each node this step, keep relaying after
            # (a failover re-points the relay). A relay refused or lost twice is not a passing fault: stop.
            self.relay_fallbacks.append(str(exc))
            log.info("session %s…: relayed step %d broke (%s); asking each node", self.session_id[:18],
                     self.hops[0].step, exc)
            if exc.code in ("relay_failed", "timeout"):
                self._relay_breaks += 1
                if self._relay_breaks >= 2:
                    self._relay_off(f"relayed steps refused or lost twice, last: {exc}")
            return None
        previous = t0
        for hop, c, at in zip(self.hops, checked, arrived, strict=True):
            self._commit(hop, c.receipt, c.in_frame, c.out_frame, c.context)
            hop.history.append((c.in_frame, start, shape))
            if self.router is not None:
                assert hop.link is not None
                # A hop's time is the gap between its receipt's arrival and the previous hop's (each node
                # pushes right after handing its output on), so a slow node is seen as slow under relay too.
                self.router.observe(hop.link.peer.url, max(0.0, at - previous))
            previous = max(previous, at)
        self.relay_steps += 1
        self.relay_ticks += tick
        self._pinned = relay.route
        return checked[-1].out

    async def _await_relay(self, orders: list[HopOrder], frame: bytes, start: int, shape: tuple[int, ...]
                           ) -> tuple[list[_Checked], list[float]]:
        """Take every hop's pushed receipt and frame, checking each hop as soon as its input (the previous
        hop's output) is known; nothing is committed here. Every link is watched: a node that dies or
        pushes an error ends the wait at once instead of after the timeout. Once the last hop's result is
        in, a hop whose receipt has not come within ``relay_grace_s`` fails the check. Also returns when
        each hop's receipt arrived."""
        links = [h.link for h in self.hops]
        n = len(links)
        got: list[tuple[Receipt, bytes] | None] = [None] * n
        arrived = [0.0] * n
        checked: list[_Checked] = []
        tasks = {asyncio.create_task(link.receive()): i for i, link in enumerate(links) if link is not None}
        try:
            pending = set(tasks)
            deadline = time.monotonic() + self.timeout_s
            while pending:
                if got[-1] is not None:
                    deadline = min(deadline, time.monotonic() + self.relay_grace_s)
                done, pending = await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()),
                                                   return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    if got[-1] is not None:
                        missing = [orders[i].url for i in range(n) if got[i] is None]
                        raise ReceiptError(f"no receipt from {', '.join(missing)} within {self.relay_grace_s:.1f}s "
                                           "of the relayed result")
                    raise RemoteError(orders[-1].url, "timeout", f"no relayed result within {self.timeout_s:.0f}s")
                for task in done:
                    i = tasks.pop(task)
                    reply, payload = task.result()  # RemoteError: that node's link is gone
                    if _stale(reply, orders, i, self._abandoned):
                        # A late push about an earlier step that was already settled another way (a relay
                        # that completed after the client had asked each node itself): not this step's news.
                        log.debug("session %s…: dropping a stale %s from %s", self.session_id[:18], reply.type, orders[i].url)
                        link = links[i]
                        assert link is not None
                        again = asyncio.create_task(link.receive())
                        tasks[again] = i
                        pending.add(again)
                        continue
                    if isinstance(reply, ErrorReply):
                        raise RemoteError(orders[i].url, reply.code, reply.message)
                    if not (isinstance(reply, RelayResult) and reply.session_id == self.session_id and reply.hop == i):
                        raise RemoteError(orders[i].url, "bad_reply", f"unexpected {reply.type!r} during a relayed step")
                    arrived[i] = time.perf_counter()
                    try:
                        got[i] = (Receipt.from_json(reply.receipt), bytes(payload))
                    except ReceiptError as exc:
                        raise ReceiptError(f"{orders[i].url}: {exc}") from None
                # Check every hop whose input is now known, in chain order.
                while len(checked) < n and got[len(checked)] is not None:
                    i = len(checked)
                    entry = got[i]
                    assert entry is not None
                    receipt, out_frame = entry
                    in_frame = frame if i == 0 else checked[i - 1].out_frame
                    context, out = self._verify(self.hops[i], receipt, in_frame, out_frame, step=orders[i].step,
                                                start=start, nonce=orders[i].request_nonce, shape=shape)
                    checked.append(_Checked(receipt, in_frame, out_frame, context, out))
                if len(checked) == n:
                    return checked, arrived
            raise RemoteError("relay", "closed", "every link closed")
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Stateless: run a whole sequence [1, T, H] through every shard over HTTP (no sessions)."""
        x = hidden
        for hop in self.hops:
            link = NodeLink(self.http, hop.candidates[0], self.timeout_s)
            hop.link = link
            frame = encode_tensor(x, self.wire_dtype)
            nonce = hex32(os.urandom(32))
            receipt, out_frame = await link.forward(self.manifest_hash, self.session_id, nonce, frame)
            hop.context = context_seed(self.manifest_hash, hop.shard_index, self.session_id)
            hop.step = 0
            _, x = self._verify(hop, receipt, frame, out_frame, step=0, start=0, nonce=nonce, shape=tuple(x.shape))
            self.sink.submit(HopRecord(receipt, link.peer.url, link.peer.address, frame, out_frame))
        return x

    async def close(self) -> None:
        await asyncio.gather(*(hop.link.close(self.session_id) for hop in self.hops if hop.link is not None))


def _stale(reply: object, orders: list[HopOrder], i: int, abandoned: deque[str]) -> bool:
    """Is this push about an earlier step than the one ordered now? A result counts as stale only for a
    relayed step the client gave up on; any other result that is not this step's is checked (and fails)."""
    if isinstance(reply, RelayResult):
        nonce = reply.receipt.get("request_nonce")
        return nonce != orders[i].request_nonce and nonce in abandoned
    if isinstance(reply, ErrorReply) and reply.code in ("relay_failed", "unknown_session") and reply.step is not None:
        return reply.step != orders[i].step
    return False
