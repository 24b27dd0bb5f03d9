"""Signed receipts: what a node attests for every result it returns.

A receipt is EIP-712 typed data so that a contract can ``ecrecover`` it (equivocation slashing).
The digest is built here by hand (it is all static 32-byte words) and cross-checked against
eth-account's generic encoder in the tests, and against the contract's digest via a shared
test vector.

``contextHash`` is a running hash over every input the node has seen in the session, up to and
including this step. Two receipts from the same node with equal ``contextHash`` and different
``outputHash`` are equivocation: an honest node computes each context exactly once.
"""

from __future__ import annotations

import hashlib
import re
import struct
import time
from dataclasses import asdict, dataclass, replace
from functools import cached_property, lru_cache

import coincurve
from eth_keys import keys
from eth_utils import keccak, to_checksum_address

from .errors import ReceiptError
from .types import NodeAddress

RECEIPT_TYPE = (
    "Receipt(bytes32 manifestHash,uint32 shardIndex,bytes32 sessionId,uint32 step,uint32 startPos,"
    "uint32 numTokens,bytes32 inputHash,bytes32 contextHash,bytes32 outputHash,bytes32 requestNonce,"
    "uint64 timestampMs)"
)
DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
RECEIPT_TYPEHASH = keccak(text=RECEIPT_TYPE)
DOMAIN_TYPEHASH = keccak(text=DOMAIN_TYPE)
DOMAIN_NAME = "veriswarm"
DOMAIN_VERSION = "1"
ZERO_ADDRESS = "0x" + "00" * 20
# secp256k1 group order; signatures with s above half of it are malleable and rejected (as OZ ECDSA does).
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

_HEX32 = re.compile(r"^0x[0-9a-f]{64}$")
_SIG = re.compile(r"0x[0-9a-f]{130}")
_UINT32 = 2**32 - 1
_UINT64 = 2**64 - 1


@dataclass(frozen=True)
class ReceiptDomain:
    """The EIP-712 domain receipts are signed under: a chain and the contract that checks them."""

    chain_id: int = 31337
    verifying_contract: str = ZERO_ADDRESS

    @cached_property
    def _separator(self) -> bytes:
        return keccak(
            DOMAIN_TYPEHASH
            + keccak(text=DOMAIN_NAME)
            + keccak(text=DOMAIN_VERSION)
            + self.chain_id.to_bytes(32, "big")
            + bytes(12)
            + bytes.fromhex(self.verifying_contract[2:])
        )

    def separator(self) -> bytes:
        return self._separator


def _b32(name: str, value: str) -> bytes:
    if not isinstance(value, str) or not _HEX32.match(value):
        raise ReceiptError(f"receipt field {name} must be 0x + 64 lower-case hex digits")
    return bytes.fromhex(value[2:])


def _uint(name: str, value: int, maximum: int) -> bytes:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise ReceiptError(f"receipt field {name} must be an integer in 0..{maximum}")
    return value.to_bytes(32, "big")


def hex32(data: bytes) -> str:
    if len(data) != 32:
        raise ValueError("expected 32 bytes")
    return "0x" + data.hex()


@dataclass(frozen=True)
class Receipt:
    manifest_hash: str
    shard_index: int
    session_id: str
    step: int
    start_pos: int
    num_tokens: int
    input_hash: str
    context_hash: str
    output_hash: str
    request_nonce: str
    timestamp_ms: int
    signature: str = ""

    def struct_hash(self) -> bytes:
        return self._struct_hash

    @cached_property
    def _struct_hash(self) -> bytes:
        return keccak(
            RECEIPT_TYPEHASH
            + _b32("manifestHash", self.manifest_hash)
            + _uint("shardIndex", self.shard_index, _UINT32)
            + _b32("sessionId", self.session_id)
            + _uint("step", self.step, _UINT32)
            + _uint("startPos", self.start_pos, _UINT32)
            + _uint("numTokens", self.num_tokens, _UINT32)
            + _b32("inputHash", self.input_hash)
            + _b32("contextHash", self.context_hash)
            + _b32("outputHash", self.output_hash)
            + _b32("requestNonce", self.request_nonce)
            + _uint("timestampMs", self.timestamp_ms, _UINT64)
        )

    def digest(self, domain: ReceiptDomain) -> bytes:
        return keccak(b"\x19\x01" + domain.separator() + self.struct_hash())

    def receipt_id(self) -> str:
        """A stable id for ledgers and APIs: keccak of the signed receipt's struct hash and signature."""
        return hex32(keccak(self.struct_hash() + bytes.fromhex(self.signature[2:])))

    def signed(self, private_key: bytes, domain: ReceiptDomain) -> Receipt:
        return replace(self, signature=sign_digest(private_key, self.digest(domain)))

    def signer(self, domain: ReceiptDomain) -> NodeAddress:
        """Recover the signing address; raises ReceiptError on a malformed or malleable signature."""
        return digest_signer(self.digest(domain), self.signature, what="receipt")

    def signer_bytes(self, domain: ReceiptDomain) -> bytes:
        """The signing address as 20 raw bytes (no EIP-55 checksum to build: a receiver compares bytes)."""
        return digest_signer_bytes(self.digest(domain), self.signature, what="receipt")

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> Receipt:
        if not isinstance(data, dict):
            raise ReceiptError("receipt must be a JSON object")
        fields = set(cls.__dataclass_fields__)
        if set(data) != fields:
            missing, extra = fields - set(data), set(data) - fields
            raise ReceiptError(f"receipt fields wrong: missing {sorted(missing)}, unexpected {sorted(extra)}")
        receipt = cls(**data)
        receipt.struct_hash()  # validates every field's type and range
        return receipt


def sign_digest(private_key: bytes, digest: bytes) -> str:
    """r ‖ s ‖ v (v = 27/28) over a 32-byte digest, as ``ecrecover`` takes it."""
    # libsecp256k1 (coincurve) signs deterministically (RFC 6979) with a low s, as eth-keys does; the
    # key object is cached because deriving it costs more than the signature (a node signs every hop).
    raw = _signing_key(private_key).sign_recoverable(digest, hasher=None)
    return "0x" + raw[:64].hex() + format(raw[64] + 27, "02x")


def digest_signer(digest: bytes, signature: object, *, what: str = "signature") -> NodeAddress:
    """The address that signed ``digest``; ReceiptError on a malformed, malleable or unrecoverable signature."""
    return NodeAddress(to_checksum_address(digest_signer_bytes(digest, signature, what=what)))


def digest_signer_bytes(digest: bytes, signature: object, *, what: str = "signature") -> bytes:
    """:func:`digest_signer` as 20 raw bytes."""
    if not isinstance(signature, str) or not _SIG.fullmatch(signature):
        raise ReceiptError(f"{what} signature must be 0x + 130 lower-case hex digits (r, s, v)")
    raw = bytes.fromhex(signature[2:])
    r, s, v = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big"), raw[64]
    if not 0 < r < _SECP256K1_N:
        raise ReceiptError(f"{what} signature has an out-of-range r value")
    if v not in (27, 28):
        raise ReceiptError(f"{what} signature has v={v}; expected 27 or 28")
    if not 0 < s <= _SECP256K1_N // 2:
        raise ReceiptError(f"{what} signature has a high s value (malleable); refused")
    try:
        # coincurve directly: the same secp256k1 recovery as eth-keys, without its per-call overhead
        pub = coincurve.PublicKey.from_signature_and_message(raw[:64] + bytes([v - 27]), digest, hasher=None)
    except (ValueError, TypeError) as exc:
        raise ReceiptError(f"{what} signature does not recover: {exc}") from exc
    return keccak(pub.format(compressed=False)[1:])[-20:]


@lru_cache(maxsize=64)
def _signing_key(private_key: bytes) -> coincurve.PrivateKey:
    return coincurve.PrivateKey(private_key)


def context_seed(manifest_hash: str, shard_index: int, session_id: str) -> bytes:
    """The context hash before any input: binds the chain to one manifest, shard and session."""
    return hashlib.sha256(
        b"veriswarm/ctx/1"
        + _b32("manifestHash", manifest_hash)
        + struct.pack(">I", shard_index)
        + _b32("sessionId", session_id)
    ).digest()


def next_context(previous: bytes, input_hash: bytes) -> bytes:
    return hashlib.sha256(previous + input_hash).digest()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def address_of(private_key: bytes) -> NodeAddress:
    return NodeAddress(to_checksum_address(keys.PrivateKey(private_key).public_key.to_canonical_address()))
