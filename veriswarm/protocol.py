"""The wire protocol between clients, nodes and verifiers: versions, envelopes, message types.

Every binary message (HTTP body or WebSocket frame) is an *envelope*::

    magic   4 bytes  b"VSW1"
    hlen    u32 LE   length of the JSON header
    header  hlen bytes of UTF-8 JSON, validated against one of the message models below
    payload the rest: a tensor frame (see frames.py) or nothing

Headers are validated strictly (unknown fields refused) before anything else is looked at.

One message is not an envelope: the *relay tick* (:class:`RelayTick`, magic ``b"VSR1"``), a relayed
step's per-step fields in a fixed binary layout, for a session whose route a full :class:`RelayStep`
has already pinned on every node of the chain.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from eth_utils import keccak
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from .errors import ErrorCode, ProtocolError
from .receipts import Receipt

#: 2: relayed receipts go straight to the client, relay links are authenticated once (LinkHello)
#: 3: relay ticks (RelayTick) on a pinned route
PROTOCOL_VERSION = "3"
VERSION_HEADER = "X-Veriswarm-Protocol"
ENVELOPE_MAGIC = b"VSW1"
MAX_HEADER_BYTES = 16 * 1024
_ENV = struct.Struct("<4sI")

Hex32 = Annotated[str, Field(pattern=r"^0x[0-9a-f]{64}$")]
Address = Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{40}$")]
MAX_CHAIN = 64
Uint32 = Annotated[int, Field(ge=0, le=2**32 - 1)]
Signature = Annotated[str, Field(pattern=r"^0x[0-9a-f]{130}$")]
LINK_DOMAIN = b"veriswarm/relay-link/1"


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ForwardRequest(_Msg):
    """Stateless forward of a whole sequence (positions 0..T-1) through one shard."""

    type: Literal["forward"] = "forward"
    manifest_hash: Hex32
    shard_index: Uint32
    session_id: Hex32
    request_nonce: Hex32


class OpenSession(_Msg):
    type: Literal["open"] = "open"
    manifest_hash: Hex32
    shard_index: Uint32
    session_id: Hex32
    max_length: Annotated[int, Field(ge=1, le=1 << 20)]
    #: the node key allowed to relay steps into this session (the previous shard's node); None: only
    #: the connection that opened the session may send steps
    upstream: Address | None = None


class StepRequest(_Msg):
    """One step of a session: the hidden states of ``T`` new positions starting at ``start_pos``."""

    type: Literal["step"] = "step"
    session_id: Hex32
    step: Uint32
    start_pos: Uint32
    request_nonce: Hex32


class SetUpstream(_Msg):
    """Name a new upstream node for a session (after the previous shard failed over to a replica)."""

    type: Literal["upstream"] = "upstream"
    session_id: Hex32
    upstream: Address | None


class CloseSession(_Msg):
    type: Literal["close"] = "close"
    session_id: Hex32


class Opened(_Msg):
    type: Literal["opened"] = "opened"
    session_id: Hex32
    max_length: int


class StepResult(_Msg):
    type: Literal["result"] = "result"
    receipt: dict[str, Any]


class Closed(_Msg):
    type: Literal["closed"] = "closed"
    session_id: Hex32


class HopOrder(_Msg):
    """The client's order for one hop of a relayed step: who computes it and what its receipt must say."""

    shard_index: Uint32
    url: Annotated[str, Field(max_length=512, pattern=r"^https?://")]
    address: Address
    step: Uint32
    start_pos: Uint32
    request_nonce: Hex32


class RelayStep(_Msg):
    """One step travelling node to node (server-to-server relay).

    ``orders`` is the whole chain, as the client ordered it; the receiving node is hop ``hop`` and the
    payload is that hop's input frame. Nothing else travels along the chain: each node sends its output
    on first and then pushes its signed receipt to the client (:class:`RelayResult`), so signing and
    checking stay off the path a token waits on. Hop 0 comes from the client that owns the session;
    any other hop only over a relay link authenticated as the session's upstream node (``LinkProof``).
    """

    type: Literal["relay"] = "relay"
    session_id: Hex32
    orders: Annotated[list[HopOrder], Field(min_length=1, max_length=MAX_CHAIN)]
    hop: Uint32


class RelayResult(_Msg):
    """Pushed by each node of a relayed step to the client that owns the session: the node's signed
    receipt for its hop; the payload is its output frame (the next hop's input, or the step's output)."""

    type: Literal["relayed"] = "relayed"
    session_id: Hex32
    hop: Uint32
    receipt: dict[str, Any]


class LinkHello(_Msg):
    """A node opening a relay link to its next hop asks to be challenged (see :func:`link_digest`)."""

    type: Literal["link_hello"] = "link_hello"


class LinkChallenge(_Msg):
    """The next hop's answer to :class:`LinkHello`: its own key and a fresh nonce to sign."""

    type: Literal["link_challenge"] = "link_challenge"
    address: Address
    nonce: Hex32


class LinkProof(_Msg):
    """The connecting node's key and its signature over :func:`link_digest` of the challenge."""

    type: Literal["link_proof"] = "link_proof"
    address: Address
    signature: Signature


class LinkAccepted(_Msg):
    type: Literal["link_accepted"] = "link_accepted"
    address: Address


def link_digest(challenger: str, nonce: str) -> bytes:
    """What a node signs to authenticate a relay link: the challenging node's address and its nonce
    (one use per connection, so a proof cannot be replayed on another connection or to another node)."""
    return bytes(keccak(LINK_DOMAIN + bytes.fromhex(challenger[2:]) + bytes.fromhex(nonce[2:])))


class ErrorReply(_Msg):
    type: Literal["error"] = "error"
    code: str
    message: str
    session_id: str | None = None
    step: int | None = None


class HopSubmission(_Msg):
    """A checked hop sent to a verifier: payload = input frame ‖ output frame (split at input_bytes)."""

    type: Literal["hop"] = "hop"
    receipt: dict[str, Any]
    node_url: Annotated[str, Field(max_length=512)]
    node_address: Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{40}$")]
    input_bytes: Annotated[int, Field(ge=0)]


Request = Annotated[ForwardRequest | OpenSession | StepRequest | CloseSession | RelayStep | SetUpstream | LinkHello
                    | LinkProof, Field(discriminator="type")]
Reply = Annotated[Opened | StepResult | Closed | RelayResult | ErrorReply | LinkChallenge | LinkAccepted,
                  Field(discriminator="type")]
_REQUEST = TypeAdapter(Request)
_REPLY = TypeAdapter(Reply)


class NodeInfo(BaseModel):
    """What ``GET /v1/info`` returns. Everything here is the node's claim, to be checked."""

    model_config = ConfigDict(extra="forbid")

    protocol_version: str
    software_version: str
    manifest_hash: Hex32
    model_name: str
    shard_index: int
    num_shards: int
    layer_start: int
    layer_end: int
    address: str
    wire_dtypes: list[str]
    #: takes part in server-to-server relay
    relay: bool = False
    max_length: int
    max_sessions: int
    free_sessions: int
    chain_id: int
    verifying_contract: str


RELAY_TICK_MAGIC = b"VSR1"
#: magic, hop (the receiver's index in the chain), hops, reserved (0), session id (32 bytes), start_pos
_TICK_HEAD = struct.Struct("<4sBBH32sI")
#: per hop, in chain order: its step and its request nonce (32 bytes)
_TICK_HOP = struct.Struct("<I32s")


@dataclass(frozen=True, slots=True)
class RelayTick:
    """A relayed step on a route already pinned (binary, no envelope)::

        magic     4 bytes  b"VSR1"
        hop       u8       the receiving node's place in the chain
        hops      u8       the chain's length, 1..MAX_CHAIN
        reserved  u16      0
        session   32 bytes the session id
        start_pos u32
        hops x (step u32, request nonce 32 bytes)
        payload   the hop's input frame

    It orders exactly what a :class:`RelayStep` would, except who the hops are: a node takes a tick
    only for a session where a full RelayStep pinned the route (every hop's shard, URL and key) and
    this node's place in it, and passes it on to the next hop of that route with ``hop`` + 1, the rest
    of the bytes unchanged. The client sends one whenever its previous relayed step on the same route
    went through; after any failure or change of route it sends a full RelayStep again. Why: a
    decode step's JSON header and its validation, on every hop, cost more than the rest of a hop's
    protocol work together once a forward has evicted the caches; a tick is read with one struct call.
    Decoded, it holds only the receiving hop's own fields (step and nonce)."""

    session_id: str
    hop: int
    hops: int
    start_pos: int
    step: int
    request_nonce: str
    #: the next hop's step (None at the last hop)
    next_step: int | None
    #: the tick's bytes before the payload: what the next hop receives, with hop + 1 (see onward)
    header: bytes

    def onward(self) -> bytes:
        """The same tick for the next hop (the payload to append is this hop's output frame)."""
        return self.header[:4] + bytes((self.hop + 1,)) + self.header[5:]


def encode_relay_tick(session_id: str, start_pos: int, steps: Sequence[int], nonces: Sequence[str], hop: int = 0) -> bytes:
    """A tick's header for ``hop`` (append the input frame). ``steps`` and ``nonces`` are per hop, in chain order."""
    if not 1 <= len(steps) <= MAX_CHAIN or len(nonces) != len(steps):
        raise ValueError(f"a relay tick needs 1..{MAX_CHAIN} hops, each with a step and a nonce")
    if not 0 <= hop < len(steps):
        raise ValueError(f"hop {hop} is outside a {len(steps)}-hop chain")
    parts = [_TICK_HEAD.pack(RELAY_TICK_MAGIC, hop, len(steps), 0, _hex32_bytes(session_id), start_pos)]
    parts += [_TICK_HOP.pack(step, _hex32_bytes(nonce)) for step, nonce in zip(steps, nonces, strict=True)]
    return b"".join(parts)


def is_relay_tick(data: bytes | bytearray | memoryview) -> bool:
    return bytes(data[:4]) == RELAY_TICK_MAGIC


def decode_relay_tick(data: bytes | bytearray | memoryview) -> tuple[RelayTick, memoryview]:
    """Read a relay tick; ProtocolError (bad_frame) with a one-line reason for any defect."""
    buf = memoryview(data)
    if len(buf) < _TICK_HEAD.size:
        raise ProtocolError(ErrorCode.BAD_FRAME, "relay tick truncated: shorter than its header")
    magic, hop, hops, reserved, session, start_pos = _TICK_HEAD.unpack_from(buf, 0)
    if magic != RELAY_TICK_MAGIC:
        raise ProtocolError(ErrorCode.BAD_FRAME, "not a relay tick (bad magic)")
    if reserved != 0:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"relay tick's reserved field must be 0, got {reserved}")
    if not 1 <= hops <= MAX_CHAIN or hop >= hops:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"relay tick names hop {hop} of a {hops}-hop chain")
    end = _TICK_HEAD.size + hops * _TICK_HOP.size
    if len(buf) < end:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"relay tick truncated: {hops} hops need {end} header bytes")
    step, nonce = _TICK_HOP.unpack_from(buf, _TICK_HEAD.size + hop * _TICK_HOP.size)
    next_step = _TICK_HOP.unpack_from(buf, _TICK_HEAD.size + (hop + 1) * _TICK_HOP.size)[0] if hop + 1 < hops else None
    tick = RelayTick(session_id="0x" + session.hex(), hop=hop, hops=hops, start_pos=start_pos, step=step,
                     request_nonce="0x" + nonce.hex(), next_step=next_step, header=bytes(buf[:end]))
    return tick, buf[end:]


def _hex32_bytes(value: str) -> bytes:
    raw = bytes.fromhex(value[2:]) if value[:2] == "0x" else b""
    if len(raw) != 32:
        raise ValueError(f"expected 0x and 64 hex digits, got {value[:20]!r}")
    return raw


def encode_envelope(header: BaseModel, payload: bytes = b"") -> bytes:
    head = header.model_dump_json().encode()
    return _ENV.pack(ENVELOPE_MAGIC, len(head)) + head + payload


def _split(data: bytes | bytearray | memoryview) -> tuple[Any, memoryview]:
    buf = memoryview(data)
    if len(buf) < _ENV.size:
        raise ProtocolError(ErrorCode.BAD_FRAME, "message truncated: shorter than the envelope header")
    magic, hlen = _ENV.unpack_from(buf, 0)
    if magic != ENVELOPE_MAGIC:
        raise ProtocolError(ErrorCode.BAD_FRAME, "not a veriswarm message (bad envelope magic)")
    if hlen > MAX_HEADER_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"message header of {hlen} bytes exceeds {MAX_HEADER_BYTES}")
    if len(buf) < _ENV.size + hlen:
        raise ProtocolError(ErrorCode.BAD_FRAME, "message truncated inside its JSON header")
    try:
        header = json.loads(bytes(buf[_ENV.size:_ENV.size + hlen]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"message header is not valid JSON: {exc}") from None
    return header, buf[_ENV.size + hlen:]


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "message"
    return f"{where}: {err.get('msg', 'invalid')}"


AnyRequest = ForwardRequest | OpenSession | StepRequest | CloseSession | RelayStep | SetUpstream | LinkHello | LinkProof
AnyReply = Opened | StepResult | Closed | RelayResult | ErrorReply | LinkChallenge | LinkAccepted


def decode_request(data: bytes | bytearray | memoryview) -> tuple[AnyRequest, memoryview]:
    header, payload = _split(data)
    try:
        return _REQUEST.validate_python(header), payload
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"invalid request: {_first_error(exc)}") from None


def decode_reply(data: bytes | bytearray | memoryview) -> tuple[AnyReply, memoryview]:
    header, payload = _split(data)
    try:
        return _REPLY.validate_python(header), payload
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"invalid reply: {_first_error(exc)}") from None


_SUBMISSION = TypeAdapter(HopSubmission)


def decode_submission(data: bytes | bytearray | memoryview) -> tuple[HopSubmission, bytes, bytes]:
    """Split a hop submission into (header, input frame, output frame); validates the header only."""
    header, payload = _split(data)
    try:
        sub = _SUBMISSION.validate_python(header)
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"invalid hop submission: {_first_error(exc)}") from None
    if sub.input_bytes > len(payload):
        raise ProtocolError(ErrorCode.BAD_FRAME, "hop submission shorter than its declared input frame")
    return sub, bytes(payload[:sub.input_bytes]), bytes(payload[sub.input_bytes:])


def error_reply(exc: ProtocolError, *, session_id: str | None = None, step: int | None = None) -> ErrorReply:
    return ErrorReply(code=exc.code.value, message=exc.message, session_id=session_id, step=step)


def result_reply(receipt: Receipt) -> StepResult:
    return StepResult(receipt=receipt.to_json())
