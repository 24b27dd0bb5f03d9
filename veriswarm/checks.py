"""Checks a receiver (client, verifier, relay) runs on a receipt before trusting an output."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .errors import ReceiptError
from .frames import sha256
from .receipts import Receipt, ReceiptDomain, hex32, next_context


class HopOrderLike(Protocol):
    """What check_relayed needs of a hop order (protocol.HopOrder; kept structural so that this
    module does not depend on the wire types)."""

    @property
    def shard_index(self) -> int: ...
    @property
    def address(self) -> str: ...
    @property
    def step(self) -> int: ...
    @property
    def start_pos(self) -> int: ...
    @property
    def request_nonce(self) -> str: ...


@dataclass(frozen=True)
class Expected:
    """What the receiver knows independently of the node that answered."""

    address: str
    manifest_hash: str
    shard_index: int
    session_id: str
    step: int
    start_pos: int
    num_tokens: int
    request_nonce: str
    previous_context: bytes


def check_receipt(receipt: Receipt, expected: Expected, input_frame: bytes, output_frame: bytes,
                  domain: ReceiptDomain) -> bytes:
    """Raise ReceiptError unless the receipt is signed by the expected node and covers exactly these
    frames at this place in the session; return the new context hash."""
    context = next_context(expected.previous_context, sha256(input_frame))
    want = {
        "manifest_hash": expected.manifest_hash,
        "shard_index": expected.shard_index,
        "session_id": expected.session_id,
        "step": expected.step,
        "start_pos": expected.start_pos,
        "num_tokens": expected.num_tokens,
        "request_nonce": expected.request_nonce,
        "input_hash": hex32(sha256(input_frame)),
        "context_hash": hex32(context),
        "output_hash": hex32(sha256(output_frame)),
    }
    for field_name, value in want.items():
        got = getattr(receipt, field_name)
        if got != value:
            raise ReceiptError(f"receipt {field_name} is {got!r}, expected {value!r}")
    signer = receipt.signer(domain)
    if signer.lower() != expected.address.lower():
        raise ReceiptError(f"receipt signed by {signer}, expected the node's key {expected.address}")
    return context


def check_relayed(receipts: Sequence[Receipt], orders: Sequence[HopOrderLike], frames: Sequence[bytes], *,
                  manifest_hash: str, session_id: str, domain: ReceiptDomain, signatures_from: int = 0) -> None:
    """Check the receipts a relayed step carries: receipt j must be signed by the node the client
    ordered for hop j, say what the client ordered (step, position, nonce), and cover exactly
    frames[j] → frames[j+1], so each hop's input is the previous hop's output.

    The context-hash chain is left to the client, which alone knows each hop's previous context;
    a relaying node checks every field and link (cheap hashes) so that a relay which drops or alters a
    receipt is refused early, but recovers signatures only from ``signatures_from`` on (its immediate
    upstream: the node the client authorised), leaving the others' signatures to the client.
    """
    if len(frames) != len(receipts) + 1:
        raise ReceiptError(f"{len(receipts)} relayed receipts need {len(receipts) + 1} frames, got {len(frames)}")
    if len(receipts) > len(orders):
        raise ReceiptError(f"{len(receipts)} relayed receipts for a chain of {len(orders)} hops")
    hashes = [sha256(f) for f in frames]
    for j, (receipt, order) in enumerate(zip(receipts, orders, strict=False)):
        want = {
            "manifest_hash": manifest_hash, "shard_index": order.shard_index, "session_id": session_id,
            "step": order.step, "start_pos": order.start_pos, "request_nonce": order.request_nonce,
            "input_hash": hex32(hashes[j]), "output_hash": hex32(hashes[j + 1]),
        }
        for field_name, value in want.items():
            got = getattr(receipt, field_name)
            if got != value:
                raise ReceiptError(f"relayed receipt {j} (shard {order.shard_index}): {field_name} is {got!r}, "
                                   f"expected {value!r}")
        if j < signatures_from:
            continue
        signer = receipt.signer(domain)
        if signer.lower() != order.address.lower():
            raise ReceiptError(f"relayed receipt {j} (shard {order.shard_index}) signed by {signer}, "
                               f"expected {order.address}")
