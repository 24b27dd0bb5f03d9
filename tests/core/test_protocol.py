import json
import struct

import pytest

from veriswarm.errors import ErrorCode, ProtocolError
from veriswarm.protocol import (
    MAX_HEADER_BYTES,
    OpenSession,
    StepRequest,
    decode_reply,
    decode_request,
    encode_envelope,
)

H = "0x" + "ab" * 32


def _raw(header: object, payload: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return b"VSW1" + struct.pack("<I", len(head)) + head + payload


def test_roundtrip() -> None:
    msg = StepRequest(session_id=H, step=1, start_pos=5, request_nonce=H)
    req, payload = decode_request(encode_envelope(msg, b"tensor"))
    assert req == msg and bytes(payload) == b"tensor"


@pytest.mark.parametrize("data,code", [
    (b"VS", ErrorCode.BAD_FRAME),
    (b"NOPE" + struct.pack("<I", 2) + b"{}", ErrorCode.BAD_FRAME),
    (b"VSW1" + struct.pack("<I", 50) + b"{}", ErrorCode.BAD_FRAME),
    (b"VSW1" + struct.pack("<I", MAX_HEADER_BYTES + 1), ErrorCode.TOO_LARGE),
    (b"VSW1" + struct.pack("<I", 5) + b"{bad}", ErrorCode.BAD_JSON),
    (_raw({"type": "teleport"}), ErrorCode.BAD_REQUEST),
    (_raw({"type": "step", "session_id": H, "step": 1, "start_pos": 0}), ErrorCode.BAD_REQUEST),
    (_raw({"type": "step", "session_id": H, "step": "1", "start_pos": 0, "request_nonce": H}), ErrorCode.BAD_REQUEST),
    (_raw({"type": "step", "session_id": "0x12", "step": 1, "start_pos": 0, "request_nonce": H}), ErrorCode.BAD_REQUEST),
    (_raw({"type": "step", "session_id": H, "step": -1, "start_pos": 0, "request_nonce": H}), ErrorCode.BAD_REQUEST),
    (_raw({"type": "close", "session_id": H, "evil": 1}), ErrorCode.BAD_REQUEST),
    (_raw({"type": "open", "manifest_hash": H, "shard_index": 0, "session_id": H, "max_length": 0}), ErrorCode.BAD_REQUEST),
    (_raw([1, 2, 3]), ErrorCode.BAD_REQUEST),
])
def test_bad_envelopes(data: bytes, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_request(data)
    assert info.value.code == code
    assert "\n" not in str(info.value)


def test_requests_are_not_replies() -> None:
    with pytest.raises(ProtocolError):
        decode_reply(encode_envelope(OpenSession(manifest_hash=H, shard_index=0, session_id=H, max_length=8)))
