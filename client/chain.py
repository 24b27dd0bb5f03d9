"""A session along the chain of shards: hidden states go node to node, every receipt is checked, and a
failing node is replaced mid-generation by another replica whose KV cache is rebuilt by replay."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import aiohttp
import torch

from veriswarm.checks import Expected, check_receipt
from veriswarm.errors import ProtocolError, ReceiptError, RemoteError
from veriswarm.frames import DTYPE_NAMES, decode_tensor, encode_tensor
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
                 session_id: str | None = None) -> None:
        if wire_dtype not in ("float32", "float16", "bfloat16"):
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

    @property
    def route(self) -> list[str]:
        return [h.link.peer.url if h.link else "" for h in self.hops]

    def _ban(self, url: str, reason: str) -> None:
        if self.router is not None:
            self.router.ban(url, reason)

    async def _connect(self, hop: _Hop, *, exclude: set[str], last: str = "no candidates") -> None:
        """Open the session on the best remaining replica of this shard; ban the ones that fail."""
        for peer in hop.candidates:
            if peer.url in exclude:
                continue
            link = NodeLink(self.http, peer, self.timeout_s)
            try:
                await link.open(self.manifest_hash, hop.shard_index, self.session_id, self.max_length)
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

    async def open(self, max_length: int) -> None:
        self.max_length = max_length
        for hop in self.hops:
            await self._connect(hop, exclude=set())

    def _check(self, hop: _Hop, receipt: Receipt, frame: bytes, out_frame: bytes, *, step: int, start: int,
               nonce: str, shape: tuple[int, ...]) -> tuple[bytes, torch.Tensor]:
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
        self.sink.submit(HopRecord(receipt, url, hop.link.peer.address, frame, out_frame))
        return context, out.to(torch.float32)

    async def _run(self, hop: _Hop, frame: bytes, start: int, shape: tuple[int, ...]) -> torch.Tensor:
        """One checked step on the hop's current node; updates the hop's step and context."""
        assert hop.link is not None
        nonce = hex32(os.urandom(32))
        t0 = time.perf_counter()
        receipt, out_frame = await hop.link.step(self.session_id, hop.step, start, nonce, frame)
        hop.context, out = self._check(hop, receipt, frame, out_frame, step=hop.step, start=start, nonce=nonce,
                                       shape=shape)
        if self.router is not None:
            self.router.observe(hop.link.peer.url, time.perf_counter() - t0)
        hop.step += 1
        return out

    async def _failover(self, hop: _Hop, failed: NodeLink, reason: str) -> None:
        """Replace a failed node: next replica, same session id, its KV cache rebuilt by replaying every
        input this shard has seen (same steps, same frames: the replica computes exactly what the
        failed node did)."""
        t0 = time.perf_counter()
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
        event = Failover(hop.shard_index, failed.peer.url, hop.link.peer.url, reason, self.position,
                         len(hop.history), time.perf_counter() - t0)
        self.failovers.append(event)
        if self.router is not None:
            self.router.stats.failovers += 1
        log.warning("shard %d: failed over from %s to %s after %s (replayed %d steps in %.2fs)",
                    event.shard, event.from_url, event.to_url, reason, event.replayed_steps, event.recovery_s)

    async def step(self, hidden: torch.Tensor) -> torch.Tensor:
        """Run [1, T, H] hidden states for the next T positions through every shard."""
        start, shape = self.position, tuple(hidden.shape)
        x = hidden
        for hop in self.hops:
            frame = encode_tensor(x.to(self.wire_dtype))
            while True:
                link = hop.link
                assert link is not None
                try:
                    out = await self._run(hop, frame, start, shape)
                    break
                except (RemoteError, ReceiptError) as exc:
                    await self._failover(hop, link, str(exc))
            hop.history.append((frame, start, shape))
            x = out
        self.position = start + shape[1]
        return x

    async def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Stateless: run a whole sequence [1, T, H] through every shard over HTTP (no sessions)."""
        x = hidden
        for hop in self.hops:
            link = NodeLink(self.http, hop.candidates[0], self.timeout_s)
            hop.link = link
            frame = encode_tensor(x.to(self.wire_dtype))
            nonce = hex32(os.urandom(32))
            receipt, out_frame = await link.forward(self.manifest_hash, self.session_id, nonce, frame)
            hop.context = context_seed(self.manifest_hash, hop.shard_index, self.session_id)
            hop.step = 0
            _, x = self._check(hop, receipt, frame, out_frame, step=0, start=0, nonce=nonce, shape=tuple(x.shape))
        return x

    async def close(self) -> None:
        for hop in self.hops:
            if hop.link is not None:
                await hop.link.close(self.session_id)
