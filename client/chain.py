"""A session along the chain of shards: hidden states go node to node, every receipt is checked."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from veriswarm.checks import Expected, check_receipt
from veriswarm.errors import ProtocolError, ReceiptError
from veriswarm.frames import DTYPE_NAMES, decode_tensor, encode_tensor
from veriswarm.receipts import Receipt, ReceiptDomain, context_seed, hex32
from veriswarm.sinks import HopRecord, ReceiptSink

from .transport import NodeLink


@dataclass
class _Hop:
    link: NodeLink
    shard_index: int
    step: int = 0
    context: bytes = b""


class ChainSession:
    def __init__(self, links: list[NodeLink], *, manifest_hash: str, domain: ReceiptDomain, sink: ReceiptSink,
                 wire_dtype: str = "float32", max_frame_bytes: int = 256 * 1024 * 1024) -> None:
        if wire_dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"wire dtype {wire_dtype!r} is not supported")
        self.session_id = hex32(os.urandom(32))
        self.manifest_hash = manifest_hash
        self.domain = domain
        self.sink = sink
        self.wire_dtype = DTYPE_NAMES[wire_dtype]
        self.max_frame_bytes = max_frame_bytes
        self.hops = [_Hop(link, link.peer.shard_index) for link in links]
        self.position = 0

    async def open(self, max_length: int) -> None:
        for hop in self.hops:
            await hop.link.open(self.manifest_hash, hop.shard_index, self.session_id, max_length)
            hop.context = context_seed(self.manifest_hash, hop.shard_index, self.session_id)

    def _check(self, hop: _Hop, receipt: Receipt, frame: bytes, out_frame: bytes, *, step: int, start: int,
               t: int, nonce: str, previous: bytes, like: torch.Tensor) -> tuple[bytes, torch.Tensor]:
        expected = Expected(address=hop.link.peer.address, manifest_hash=self.manifest_hash,
                            shard_index=hop.shard_index, session_id=self.session_id, step=step,
                            start_pos=start, num_tokens=t, request_nonce=nonce, previous_context=previous)
        try:
            context = check_receipt(receipt, expected, frame, out_frame, self.domain)
            out = decode_tensor(out_frame, max_bytes=self.max_frame_bytes, dtypes=frozenset({self.wire_dtype}))
        except (ReceiptError, ProtocolError) as exc:
            raise ReceiptError(f"{hop.link.peer.url} (shard {hop.shard_index}): {exc}") from None
        if tuple(out.shape) != tuple(like.shape):
            raise ReceiptError(f"{hop.link.peer.url}: output shape {list(out.shape)} != input {list(like.shape)}")
        self.sink.submit(HopRecord(receipt, hop.link.peer.url, hop.link.peer.address, frame, out_frame))
        return context, out.to(torch.float32)

    async def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Stateless: run a whole sequence [1, T, H] through every shard over HTTP (no sessions)."""
        x = hidden
        for hop in self.hops:
            frame = encode_tensor(x.to(self.wire_dtype))
            nonce = hex32(os.urandom(32))
            receipt, out_frame = await hop.link.forward(self.manifest_hash, self.session_id, nonce, frame)
            seed = context_seed(self.manifest_hash, hop.shard_index, self.session_id)
            _, x = self._check(hop, receipt, frame, out_frame, step=0, start=0, t=int(x.shape[1]), nonce=nonce,
                               previous=seed, like=x)
        return x

    async def step(self, hidden: torch.Tensor) -> torch.Tensor:
        """Run [1, T, H] hidden states for the next T positions through every shard."""
        start, t = self.position, int(hidden.shape[1])
        x = hidden
        for hop in self.hops:
            frame = encode_tensor(x.to(self.wire_dtype))
            nonce = hex32(os.urandom(32))
            receipt, out_frame = await hop.link.step(self.session_id, hop.step, start, nonce, frame)
            hop.context, x = self._check(hop, receipt, frame, out_frame, step=hop.step, start=start, t=t,
                                         nonce=nonce, previous=hop.context, like=x)
            hop.step += 1
        self.position = start + t
        return x

    async def close(self) -> None:
        for hop in self.hops:
            await hop.link.close(self.session_id)
