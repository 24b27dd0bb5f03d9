"""Wire types of the zk dispute step: a verifier asks a node for a slice proof (``POST /v1/prove``).

Request: a protocol envelope (see protocol.py) whose JSON header is a :class:`ProveRequest` and whose
payload is the session's committed input frames on the node's shard, steps 0..``step`` concatenated
(``frame_bytes`` gives their lengths; each frame's sha256 must equal the matching ``input_hashes`` entry,
which the verifier copied from the node's own signed receipts). Reply: JSON, a :class:`ProveResponse`
carrying the ezkl proof (``verifier.zk.SliceProof`` JSON), the node's float output rows of the slice, and
the node's signature over :func:`claim_digest` — so an invalid proof or a wrong claim is attributable
to the node's key, not only to an HTTP exchange.

This module validates shapes only (pydantic, unknown fields refused); what the slice and proof *mean*
is checked by ``veriswarm.verifier.zk`` (``SliceSpec.from_dict``, ``SliceProof.from_json``,
``verify_slice``). Like the rest of ``veriswarm/``, it imports nothing else of the project.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Annotated, Any, Literal

from eth_keys import keys
from eth_keys.exceptions import BadSignature
from eth_keys.exceptions import ValidationError as KeyValidationError
from eth_utils import keccak
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from .errors import ErrorCode, ProtocolError
from .protocol import Hex32, Uint32, _split, encode_envelope

PROVE_PATH = "/v1/prove"
CLAIM_DOMAIN = b"veriswarm/zk-claim/1"
MAX_PROVE_FRAMES = 4096
MAX_CLAIMED_ROWS = 256


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


_PROVE_REQUEST = TypeAdapter(ProveRequest)
_PROVE_RESPONSE = TypeAdapter(ProveResponse)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "message"
    return f"{where}: {err.get('msg', 'invalid')}"


def encode_prove_request(request: ProveRequest, frames: list[bytes]) -> bytes:
    if [len(f) for f in frames] != request.frame_bytes:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "frame_bytes does not list the lengths of the frames sent")
    return encode_envelope(request, b"".join(frames))


def decode_prove_request(data: bytes | bytearray | memoryview) -> tuple[ProveRequest, list[bytes]]:
    """Validate a prove request and split its payload into the committed frames (hashes checked here)."""
    header, payload = _split(data)
    try:
        req = _PROVE_REQUEST.validate_python(header)
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"invalid prove request: {_first_error(exc)}") from None
    if len(req.input_hashes) != req.step + 1 or len(req.frame_bytes) != req.step + 1:
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"a prove request for step {req.step} carries the inputs of steps 0..{req.step}: "
                            f"{req.step + 1} hashes and frames, got {len(req.input_hashes)} and {len(req.frame_bytes)}")
    if sum(req.frame_bytes) != len(payload):
        raise ProtocolError(ErrorCode.BAD_FRAME, f"payload has {len(payload)} bytes, frame_bytes sum to {sum(req.frame_bytes)}")
    frames, at = [], 0
    for k, (n, want) in enumerate(zip(req.frame_bytes, req.input_hashes, strict=True)):
        frame = bytes(payload[at:at + n])
        at += n
        if "0x" + hashlib.sha256(frame).hexdigest() != want:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"frame {k} does not hash to input_hashes[{k}]")
        frames.append(frame)
    return req, frames


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
    """r ‖ s ‖ v (v = 27/28) over ``digest``, the receipts' signature format."""
    v, r, s = keys.PrivateKey(private_key).sign_msg_hash(digest).vrs
    return "0x" + (r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v + 27])).hex()


def claim_signer(digest: bytes, signature: str) -> str:
    """The checksummed address that signed ``digest``; ProtocolError if the signature does not recover."""
    raw = bytes.fromhex(signature.removeprefix("0x"))
    if len(raw) != 65 or raw[64] not in (27, 28):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "claim signature must be 65 bytes r ‖ s ‖ v with v 27 or 28")
    try:
        sig = keys.Signature(signature_bytes=raw[:64] + bytes([raw[64] - 27]))
        return str(sig.recover_public_key_from_msg_hash(digest).to_checksum_address())
    except (BadSignature, KeyValidationError, ValueError) as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"claim signature does not recover: {exc}") from None
