"""Checks a receiver (client, verifier, relay) runs on a receipt before trusting an output."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from eth_utils import to_checksum_address

from .errors import ReceiptError
from .frames import sha256
from .receipts import Receipt, ReceiptDomain, hex32, next_context


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
    signer = receipt.signer_bytes(domain)
    if signer != _address_bytes(expected.address):
        raise ReceiptError(f"receipt signed by {to_checksum_address(signer)}, expected the node's key {expected.address}")
    return context


@lru_cache(maxsize=1024)
def _address_bytes(address: str) -> bytes:
    """0x + 40 hex digits (any case) as 20 bytes; anything else can match no signer."""
    try:
        raw = bytes.fromhex(address[2:]) if address[:2] in ("0x", "0X") else b""
    except ValueError:
        return b""
    return raw if len(raw) == 20 else b""
