import json
import struct

import pytest

from veriswarm.errors import ErrorCode, ProtocolError
from veriswarm.protocol import (
    MAX_HEADER_BYTES,
    OpenSession,
    StepRequest,
    decode_relay_tick,
    decode_reply,
    decode_request,
    encode_envelope,
    encode_relay_tick,
    is_relay_tick,
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


S = ["0x" + bytes([i]).hex() * 32 for i in (1, 2, 3)]
N = ["0x" + bytes([i]).hex() * 32 for i in (7, 8, 9)]


def test_relay_tick_roundtrip_and_onward() -> None:
    head = encode_relay_tick(S[0], 40, [5, 6, 7], N)
    assert len(head) == 44 + 3 * 36 and is_relay_tick(head + b"frame")
    tick, payload = decode_relay_tick(head + b"frame")
    assert bytes(payload) == b"frame"
    assert (tick.session_id, tick.hop, tick.hops, tick.start_pos) == (S[0], 0, 3, 40)
    assert (tick.step, tick.request_nonce, tick.next_step) == (5, N[0], 6)
    # Passed on, it is the same tick for the next hop: only the hop changes.
    second, _ = decode_relay_tick(tick.onward())
    assert (second.hop, second.step, second.request_nonce, second.next_step) == (1, 6, N[1], 7)
    last, _ = decode_relay_tick(second.onward())
    assert (last.hop, last.step, last.request_nonce, last.next_step) == (2, 7, N[2], None)
    assert last.session_id == S[0] and last.start_pos == 40
    assert not is_relay_tick(encode_envelope(StepRequest(session_id=H, step=1, start_pos=5, request_nonce=H)))


_TICK = encode_relay_tick(S[0], 0, [1, 1], N[:2])


@pytest.mark.parametrize("data,why", [
    (_TICK[:43], "shorter than its header"),
    (b"VSR2" + _TICK[4:], "bad magic"),
    (_TICK[:6] + b"\x01\x00" + _TICK[8:], "reserved"),
    (_TICK[:4] + b"\x02" + _TICK[5:], "hop 2 of a 2-hop chain"),
    (_TICK[:5] + b"\x00" + _TICK[6:], "hop 0 of a 0-hop chain"),
    (_TICK[:5] + bytes([65]) + _TICK[6:], "hop 0 of a 65-hop chain"),
    (_TICK[:5] + b"\x03" + _TICK[6:], "3 hops need 152 header bytes"),
])
def test_bad_relay_ticks(data: bytes, why: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_relay_tick(data)
    assert info.value.code == ErrorCode.BAD_FRAME and why in str(info.value)


@pytest.mark.parametrize("kwargs", [
    {"steps": [], "nonces": []},
    {"steps": [1, 2], "nonces": N[:1]},
    {"steps": [1], "nonces": N[:1], "hop": 1},
    {"steps": [1], "nonces": ["0x12"]},
    {"steps": [1], "nonces": N[:1], "session_id": "ab" * 32},
])
def test_relay_tick_refuses_to_encode_nonsense(kwargs: dict[str, object]) -> None:
    args = {"session_id": S[0], "start_pos": 0, **kwargs}
    with pytest.raises(ValueError):
        encode_relay_tick(**args)  # type: ignore[arg-type]
