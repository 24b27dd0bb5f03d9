"""Wire types of the dispute step: a verifier asks a node for its signed per-layer transcript of a disputed
hop (``POST /v1/trace``: :class:`TraceRequest` → :class:`TraceResponse` + one fp32 frame per layer, signed
over :func:`trace_digest`), then for a slice proof (``POST /v1/prove``).

Request: a protocol envelope (see protocol.py) whose JSON header is a :class:`ProveRequest` (or a
:class:`TraceRequest`) and whose payload is the session's committed input frames on the node's shard,
steps 0..``step`` concatenated (``frame_bytes`` gives their lengths; each frame's sha256 must equal the
matching ``input_hashes`` entry, which the verifier copied from the node's own signed receipts). Reply:
JSON, a :class:`ProveResponse` carrying the ezkl proof (``verifier.zk.SliceProof`` JSON), the node's float
output rows of the slice, and the node's signature over :func:`claim_digest` — so an invalid proof or a
wrong claim is attributable to the node's key, not only to an HTTP exchange.

This module validates shapes only (pydantic, unknown fields refused); what the slice and proof *mean*
is checked by ``veriswarm.verifier.zk`` (``SliceSpec.from_dict``, ``SliceProof.from_json``,
``verify_slice``). Like the rest of ``veriswarm/``, it imports nothing else of the project.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Annotated, Any, Literal

from eth_utils import keccak
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from .errors import ErrorCode, ProtocolError, ReceiptError
from .protocol import Hex32, Uint32, _split, encode_envelope
from .receipts import digest_signer, sign_digest

PROVE_PATH = "/v1/prove"
CLAIM_DOMAIN = b"veriswarm/zk-claim/1"
MAX_PROVE_FRAMES = 4096
MAX_CLAIMED_ROWS = 256
TRACE_PATH = "/v1/trace"
TRACE_DOMAIN = b"veriswarm/trace/1"
#: positions one trace may ask for: the transcript is layers × positions × hidden fp32 values
MAX_TRACE_POSITIONS = 16
MAX_TRACE_LAYERS = 1024


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ProveRequest(_Msg):
    """Prove one pre-registered slice of this node's computation at one position of a session."""

    type: Literal["prove"] = "prove"
    slice: dict[str, Any]  # a verifier.zk SliceSpec as JSON (manifest, shard, layer, matrix, rows)
    session_id: Hex32
    step: Uint32  # the disputed step; the payload holds the inputs of steps 0..step
    token: Uint32  # the absolute position (0-based, in the session) whose slice is proven
    input_hashes: Annotated[list[Hex32], Field(min_length=1, max_length=MAX_PROVE_FRAMES)]
    frame_bytes: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1, max_length=MAX_PROVE_FRAMES)]
    nonce: Hex32  # the verifier's challenge, signed back in the claim (freshness)


class ProveResponse(_Msg):
    type: Literal["proof"] = "proof"
    proof: dict[str, Any]  # a verifier.zk SliceProof as JSON
    claimed_output: Annotated[list[float], Field(min_length=1, max_length=MAX_CLAIMED_ROWS)]
    signature: Annotated[str, Field(pattern=r"^0x[0-9a-f]{130}$")]


class TraceRequest(_Msg):
    """Return this node's per-layer hidden states at ``positions`` of a disputed step, signed.

    Same committed inputs as a :class:`ProveRequest` (steps 0..``step``, each frame hash-checked against
    ``input_hashes``, copied from the node's receipts); ``receipt_id`` names the disputed receipt, so the
    signed transcript is bound to the output that receipt signs."""

    type: Literal["trace"] = "trace"
    manifest_hash: Hex32
    shard: Uint32
    session_id: Hex32
    step: Uint32
    receipt_id: Hex32
    #: absolute positions (0-based, in the session), strictly increasing, all inside step ``step``
    positions: Annotated[list[Uint32], Field(min_length=1, max_length=MAX_TRACE_POSITIONS)]
    input_hashes: Annotated[list[Hex32], Field(min_length=1, max_length=MAX_PROVE_FRAMES)]
    frame_bytes: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1, max_length=MAX_PROVE_FRAMES)]
    nonce: Hex32


class TraceResponse(_Msg):
    """Header of the trace reply; its payload is one fp32 frame [1, len(positions), hidden] per layer of the
    shard, in order (the output of layer ``layer_start + i`` is frame ``i``)."""

    type: Literal["trace"] = "trace"
    layer_start: Uint32
    layer_hashes: Annotated[list[Hex32], Field(min_length=1, max_length=MAX_TRACE_LAYERS)]
    frame_bytes: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1, max_length=MAX_TRACE_LAYERS)]
    signature: Annotated[str, Field(pattern=r"^0x[0-9a-f]{130}$")]


_PROVE_REQUEST = TypeAdapter(ProveRequest)
_PROVE_RESPONSE = TypeAdapter(ProveResponse)
_TRACE_REQUEST = TypeAdapter(TraceRequest)
_TRACE_RESPONSE = TypeAdapter(TraceResponse)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "message"
    return f"{where}: {err.get('msg', 'invalid')}"


def encode_prove_request(request: ProveRequest, frames: list[bytes]) -> bytes:
    if [len(f) for f in frames] != request.frame_bytes:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "frame_bytes does not list the lengths of the frames sent")
    return encode_envelope(request, b"".join(frames))


def _decode_dispute(data: bytes | bytearray | memoryview, adapter: TypeAdapter[Any], kind: str) -> tuple[Any, memoryview]:
    """A prove or trace request's validated header, with the inputs of steps 0..step it must carry."""
    header, payload = _split(data)
    try:
        req = adapter.validate_python(header)
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"invalid {kind} request: {_first_error(exc)}") from None
    if len(req.input_hashes) != req.step + 1 or len(req.frame_bytes) != req.step + 1:
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"a {kind} request for step {req.step} carries the inputs of steps 0..{req.step}: "
                            f"{req.step + 1} hashes and frames, got {len(req.input_hashes)} and {len(req.frame_bytes)}")
    return req, payload


def decode_prove_request(data: bytes | bytearray | memoryview) -> tuple[ProveRequest, list[bytes]]:
    """Validate a prove request and split its payload into the committed frames (hashes checked here)."""
    req, payload = _decode_dispute(data, _PROVE_REQUEST, "prove")
    return req, _hashed_frames(payload, req.frame_bytes, req.input_hashes, "input_hashes")


def _hashed_frames(payload: memoryview, sizes: list[int], hashes: list[str], name: str) -> list[bytes]:
    """Cut ``payload`` into frames of ``sizes`` bytes, each of which must hash (sha256) to ``hashes``."""
    if sum(sizes) != len(payload):
        raise ProtocolError(ErrorCode.BAD_FRAME, f"payload has {len(payload)} bytes, frame_bytes sum to {sum(sizes)}")
    frames, at = [], 0
    for k, (n, want) in enumerate(zip(sizes, hashes, strict=True)):
        frame = bytes(payload[at:at + n])
        at += n
        if "0x" + hashlib.sha256(frame).hexdigest() != want:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"frame {k} does not hash to {name}[{k}]")
        frames.append(frame)
    return frames


def decode_prove_response(data: bytes) -> ProveResponse:
    try:
        header = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"prove response is not JSON: {exc}") from None
    try:
        resp = _PROVE_RESPONSE.validate_python(header)
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"invalid prove response: {_first_error(exc)}") from None
    if not all(math.isfinite(v) for v in resp.claimed_output):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "invalid prove response: claimed_output is not finite")
    return resp


def claim_digest(request: ProveRequest, proof: dict[str, Any], claimed_output: list[float]) -> bytes:
    """keccak256 of what the node attests: the challenge (nonce, session, step, token, slice, committed
    inputs), the proof object and its claimed float rows, as canonical JSON. The node signs this digest
    with its receipt key (raw secp256k1 over the hash, r ‖ s ‖ v as in receipts)."""
    body = {"request": request.model_dump(mode="json"), "proof": proof, "claimed_output": [float(v) for v in claimed_output]}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    return bytes(keccak(CLAIM_DOMAIN + canon))


def sign_claim(digest: bytes, private_key: bytes) -> str:
    """r ‖ s ‖ v (v = 27/28) over ``digest``, the receipts' signature format (:func:`receipts.sign_digest`)."""
    return sign_digest(private_key, digest)


def claim_signer(digest: bytes, signature: str) -> str:
    """The checksummed address that signed ``digest``; ProtocolError unless the signature is in its one
    canonical form (lower-case hex, low s) and recovers. One form only: a replay check keyed on the
    signature must not take the same signature spelled otherwise for a new one."""
    try:
        return digest_signer(digest, signature, what="claim")
    except ReceiptError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, str(exc)) from None


def encode_trace_request(request: TraceRequest, frames: list[bytes]) -> bytes:
    if [len(f) for f in frames] != request.frame_bytes:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "frame_bytes does not list the lengths of the frames sent")
    return encode_envelope(request, b"".join(frames))


def decode_trace_request(data: bytes | bytearray | memoryview) -> tuple[TraceRequest, list[bytes]]:
    """Validate a trace request and split its payload into the committed frames (hashes checked here).
    Whether the positions lie inside the disputed step needs the frames' shapes: the node checks that."""
    req, payload = _decode_dispute(data, _TRACE_REQUEST, "trace")
    if any(b <= a for a, b in zip(req.positions, req.positions[1:], strict=False)):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "invalid trace request: positions must be strictly increasing")
    return req, _hashed_frames(payload, req.frame_bytes, req.input_hashes, "input_hashes")


def encode_trace_response(response: TraceResponse, frames: list[bytes]) -> bytes:
    if [len(f) for f in frames] != response.frame_bytes:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "frame_bytes does not list the lengths of the frames sent")
    return encode_envelope(response, b"".join(frames))


def decode_trace_response(data: bytes | bytearray | memoryview) -> tuple[TraceResponse, list[bytes]]:
    """Validate a trace reply and split its payload into the per-layer frames (each hash-checked against
    ``layer_hashes``, which the signature covers). What the frames contain is checked by the verifier."""
    header, payload = _split(data)
    try:
        resp = _TRACE_RESPONSE.validate_python(header)
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"invalid trace response: {_first_error(exc)}") from None
    if len(resp.frame_bytes) != len(resp.layer_hashes):
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"invalid trace response: {len(resp.layer_hashes)} layer hashes, {len(resp.frame_bytes)} frames")
    return resp, _hashed_frames(payload, resp.frame_bytes, resp.layer_hashes, "layer_hashes")


def trace_digest(request: TraceRequest, layer_start: int, layer_hashes: list[str]) -> bytes:
    """keccak256 of what the node commits to when traced: the challenge (nonce, manifest, shard, session,
    step, disputed receipt id, positions, committed input hashes) and the sha256 of each layer's output
    frame, as canonical JSON. Signed with the receipt key (:func:`sign_claim`), so the transcript is the
    node's own statement, usable as evidence against it."""
    body = {"request": request.model_dump(mode="json"), "layer_start": int(layer_start),
            "layer_hashes": list(layer_hashes)}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    return bytes(keccak(TRACE_DOMAIN + canon))


# ---- who may ask a node to prove or trace ---------------------------------------------------------
#: ``<timestamp ms>:<0x signature>`` over :func:`caller_digest`: the verifier that sends a dispute request
CALLER_HEADER = "X-Veriswarm-Verifier-Signature"
CALLER_DOMAIN = b"veriswarm/zk-request/1"


def caller_digest(path: str, timestamp_ms: int, body: bytes) -> bytes:
    """What a verifier signs to ask for a proof or a trace: the endpoint, the time and the exact body,
    so a signed request cannot be sent to the other endpoint, altered, or replayed later."""
    return bytes(keccak(CALLER_DOMAIN + path.encode() + timestamp_ms.to_bytes(8, "big") + hashlib.sha256(body).digest()))


def caller_header(private_key: bytes, path: str, body: bytes, timestamp_ms: int) -> str:
    return f"{timestamp_ms}:{sign_claim(caller_digest(path, timestamp_ms, body), private_key)}"


def caller_of(header: str | None, path: str, body: bytes) -> tuple[str, int, str]:
    """(signer address, timestamp ms, signature) of a dispute request; ProtocolError(FORBIDDEN) when the
    header is missing or malformed or does not recover."""
    if not header or ":" not in header:
        raise ProtocolError(ErrorCode.FORBIDDEN, f"dispute requests must be signed by a verifier ({CALLER_HEADER})")
    stamp, signature = header.split(":", 1)
    if not stamp.isdigit() or len(stamp) > 16:
        raise ProtocolError(ErrorCode.FORBIDDEN, f"{CALLER_HEADER}: bad timestamp")
    try:
        address = claim_signer(caller_digest(path, int(stamp), body), signature)
    except (ProtocolError, ValueError) as exc:
        raise ProtocolError(ErrorCode.FORBIDDEN, f"{CALLER_HEADER}: {exc}") from None
    return address, int(stamp), signature
