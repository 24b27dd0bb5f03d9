import struct

import pytest
import torch

from veriswarm.errors import ErrorCode, ProtocolError
from veriswarm.frames import decode_tensor, encode_tensor

CAP = 1 << 20


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int8])
def test_roundtrip_is_bit_exact(dtype: torch.dtype) -> None:
    t = (torch.randn(1, 3, 7) * 10).to(dtype)
    back = decode_tensor(encode_tensor(t), max_bytes=CAP)
    assert back.dtype == dtype and back.shape == t.shape
    assert torch.equal(back.view(torch.uint8) if dtype != torch.bfloat16 else back.view(torch.int16),
                       t.view(torch.uint8) if dtype != torch.bfloat16 else t.view(torch.int16))


def test_layout_is_header_then_little_endian_bytes() -> None:
    frame = encode_tensor(torch.tensor([[1.0, 2.0]]))
    assert frame[:4] == b"VSTF" and frame[4:8] == bytes([1, 1, 2, 0])
    assert struct.unpack("<2I", frame[8:16]) == (1, 2)
    assert struct.unpack("<2f", frame[16:]) == (1.0, 2.0)


def _code(data: bytes, **kw: object) -> ErrorCode:
    with pytest.raises(ProtocolError) as info:
        decode_tensor(data, **{"max_bytes": CAP, **kw})  # type: ignore[arg-type]
    return info.value.code


def test_malformed_frames_are_refused_with_a_code() -> None:
    good = encode_tensor(torch.zeros(1, 2, 4))
    assert _code(good[:5]) == ErrorCode.BAD_FRAME  # shorter than the header
    assert _code(b"XXXX" + good[4:]) == ErrorCode.BAD_FRAME  # magic
    assert _code(good[:4] + bytes([9]) + good[5:]) == ErrorCode.BAD_FRAME  # version
    assert _code(good[:5] + bytes([77]) + good[6:]) == ErrorCode.BAD_DTYPE  # dtype code
    assert _code(good[:6] + bytes([0]) + good[7:]) == ErrorCode.BAD_SHAPE  # rank 0
    assert _code(good[:6] + bytes([9]) + good[7:]) == ErrorCode.BAD_SHAPE  # rank 9
    assert _code(good[:7] + bytes([1]) + good[8:]) == ErrorCode.BAD_FRAME  # flags
    assert _code(good[:-1]) == ErrorCode.BAD_FRAME  # truncated data
    assert _code(good + b"\0") == ErrorCode.BAD_FRAME  # trailing bytes
    assert _code(good, max_bytes=len(good) - 1) == ErrorCode.TOO_LARGE
    assert _code(good, dtypes=frozenset({torch.float16})) == ErrorCode.BAD_DTYPE


def test_huge_declared_shape_does_not_allocate() -> None:
    frame = b"VSTF" + bytes([1, 1, 3, 0]) + struct.pack("<3I", 1, 2**31, 2**31)
    assert _code(frame) == ErrorCode.BAD_FRAME


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_non_finite_values_are_refused(dtype: torch.dtype) -> None:
    for bad in (float("nan"), float("inf"), float("-inf")):
        assert _code(encode_tensor(torch.tensor([[1.0, bad, 2.0]], dtype=dtype))) == ErrorCode.BAD_FRAME
    # the largest and smallest finite values, and subnormals, are data
    info = torch.finfo(dtype)
    edge = torch.tensor([info.max, -info.max, info.tiny, info.tiny / 4, -0.0], dtype=dtype)
    assert torch.equal(decode_tensor(encode_tensor(edge), max_bytes=1 << 10), edge)


def test_unsupported_dtype_cannot_be_encoded() -> None:
    with pytest.raises(ProtocolError):
        encode_tensor(torch.zeros(2, dtype=torch.float64))
