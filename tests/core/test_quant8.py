"""The q8 wire format (veriswarm/quant8.py): layout, error bound, and every malformed-input case."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from veriswarm.errors import ErrorCode, ProtocolError
from veriswarm.frames import Q8, decode_tensor, encode_tensor, frame_wire
from veriswarm.quant8 import DEFAULT_OUTLIERS, MAX_OUTLIERS, encode_body

CAP = 1 << 24


def build(dims: list[int], *, k: int, scales: list[float], index: list[int], values: list[float], q: list[int],
          reserved: int = 0, version: int = 1) -> bytes:
    """A q8 frame written straight from the spec in docs/architecture.md (independent of the encoder)."""
    return (b"VSTF" + bytes([version, 5, len(dims), 0]) + struct.pack(f"<{len(dims)}I", *dims)
            + struct.pack("<HH", k, reserved) + struct.pack(f"<{len(scales)}f", *scales)
            + struct.pack(f"<{len(index)}H", *index) + struct.pack(f"<{len(values)}f", *values)
            + struct.pack(f"<{len(q)}b", *q))


def _code(data: bytes, **kw: object) -> ErrorCode:
    with pytest.raises(ProtocolError) as info:
        decode_tensor(data, **{"max_bytes": CAP, **kw})  # type: ignore[arg-type]
    return info.value.code


def bound(cols: int, k: int) -> float:
    """The documented worst-case relative L2 error of one row."""
    return math.sqrt(max(cols - k, 0)) / (254 * math.sqrt(k + 1))


def row_errors(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x64, y64 = x.reshape(-1, x.shape[-1]).double(), y.reshape(-1, y.shape[-1]).double()
    return (x64 - y64).norm(dim=1) / x64.norm(dim=1).clamp_min(1e-300)


def test_layout_matches_the_spec() -> None:
    x = torch.tensor([[0.5, -100.0, 0.25, 1.0]])
    got = encode_tensor(x, Q8)
    # k = min(16, 4) = 4: every channel is an exact outlier, the int8 part is all zero with scale 0.
    assert got == build([1, 4], k=4, scales=[0.0], index=[0, 1, 2, 3], values=[0.5, -100.0, 0.25, 1.0], q=[0] * 4)
    wide = torch.zeros(1, 20)
    wide[0, 3], wide[0, 7] = 127.0, -63.5  # both among the row's 16 outliers, the rest zeros: exact
    assert decode_tensor(encode_tensor(wide, Q8), max_bytes=CAP).tolist() == wide.tolist()
    frame = build([2, 3], k=1, scales=[0.5, 2.0], index=[2, 0], values=[1000.0, -7.0], q=[2, -4, 0, 0, 127, -127])
    assert decode_tensor(frame, max_bytes=CAP).tolist() == [[1.0, -2.0, 1000.0], [-7.0, 254.0, -254.0]]
    assert frame_wire(frame) == Q8 and frame_wire(encode_tensor(x, torch.float16)) == torch.float16


def test_decode_returns_float32_and_keeps_the_shape() -> None:
    for shape in [(7,), (3, 40), (1, 5, 64), (2, 2, 3, 33)]:
        x = torch.randn(shape) * 10
        back = decode_tensor(encode_tensor(x, Q8), max_bytes=CAP)
        assert back.dtype == torch.float32 and back.shape == x.shape
        assert float(row_errors(x, back).max()) <= bound(shape[-1], min(DEFAULT_OUTLIERS, shape[-1])) * (1 + 1e-4)


def test_massive_outliers_are_exact_and_the_rest_keeps_its_resolution() -> None:
    x = torch.randn(1, 6, 576)
    x[0, 0, 507], x[0, 0, 247], x[0, 3, 100] = 23224.0, -1726.3, 881.5  # SmolLM2-like attention-sink channels
    back = decode_tensor(encode_tensor(x, Q8), max_bytes=CAP)
    assert back[0, 0, 507] == x[0, 0, 507] and back[0, 0, 247] == x[0, 0, 247] and back[0, 3, 100] == x[0, 3, 100]
    # Ordinary channels: off by at most half a step of the row's own (outlier-free) scale.
    for t in range(6):
        step = x[0, t].abs().sort().values[-DEFAULT_OUTLIERS - 1] / 127
        assert float((back[0, t] - x[0, t]).abs().max()) <= float(step) / 2 * (1 + 1e-5)


def test_edge_rows_zeros_tiny_empty_and_half_inputs() -> None:
    zeros = torch.zeros(2, 100)
    assert torch.equal(decode_tensor(encode_tensor(zeros, Q8), max_bytes=CAP), zeros)
    tiny = torch.full((1, 100), 1e-44)  # subnormal: the scale underflows to 0, values round to 0, no NaN
    assert bool(torch.isfinite(decode_tensor(encode_tensor(tiny, Q8), max_bytes=CAP)).all())
    for shape in [(1, 0, 64), (2, 0), (0,)]:
        empty = torch.zeros(shape)
        back = decode_tensor(encode_tensor(empty, Q8), max_bytes=CAP)
        assert back.shape == empty.shape and back.dtype == torch.float32
    half = (torch.randn(3, 50) * 4).half()
    back = decode_tensor(encode_tensor(half, Q8), max_bytes=CAP)
    assert float(row_errors(half.float(), back).max()) <= bound(50, 16) * (1 + 1e-4)


def test_the_budget_reaches_the_documented_bound_but_not_beyond() -> None:
    # The adversarial row for the bound: 17 equal large values and every other channel half a step off.
    cols, k = 576, DEFAULT_OUTLIERS
    a = 127.0
    x = torch.full((1, cols), 0.5 - 1e-3)  # rounds to 0: error ~0.5 = scale / 2 with scale = a / 127 = 1
    x[0, :k + 1] = a
    err = float(row_errors(x, decode_tensor(encode_tensor(x, Q8), max_bytes=CAP))[0])
    assert 0.5 * bound(cols, k) < err <= bound(cols, k)


def _finite_rows() -> st.SearchStrategy[np.ndarray]:
    shapes = st.tuples(st.integers(1, 4), st.integers(1, 96))

    def make(shape: tuple[int, int], seed: int, exponent: int, spikes: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(shape).astype(np.float32) * np.float32(10.0 ** exponent)
        for _ in range(spikes):  # massive outliers, sometimes several in one row
            r, c = rng.integers(shape[0]), rng.integers(shape[1])
            x[r, c] = np.float32(rng.choice([-1, 1]) * 10.0 ** (exponent + rng.integers(1, 5)))
        return x

    return st.builds(make, shapes, st.integers(0, 2**32 - 1), st.integers(-20, 20), st.integers(0, 40))


@settings(max_examples=200, deadline=None)
@given(_finite_rows(), st.integers(0, 24))
def test_property_roundtrip_is_within_the_bound(x_np: np.ndarray, k: int) -> None:
    x = torch.from_numpy(x_np)
    frame = encode_tensor(x, Q8)[:16] + encode_body(x, k)  # header and dims do not depend on k
    back = decode_tensor(frame, max_bytes=CAP)
    kk = min(k, x.shape[1])
    assert back.dtype == torch.float32 and back.shape == x.shape
    assert float(row_errors(x, back).max()) <= bound(x.shape[1], kk) * (1 + 1e-4) + 1e-30
    # The kk largest magnitudes of each row travel exactly (counted, since ties may pick either channel).
    assert bool(((back == x).sum(dim=1) >= kk).all())
    # Re-encoding what was decoded (what the client does between hops) adds at most one more rounding.
    again = decode_tensor(encode_tensor(back, Q8)[:16] + encode_body(back, k), max_bytes=CAP)
    b = bound(x.shape[1], kk)
    assert float(row_errors(x, again).max()) <= (2 + b) * b * (1 + 1e-4) + 1e-30


def test_encoder_refuses_what_it_cannot_send() -> None:
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ProtocolError) as info:
            encode_tensor(torch.tensor([[1.0, bad]]), Q8)
        assert info.value.code == ErrorCode.BAD_FRAME
    with pytest.raises(ProtocolError) as info:
        encode_tensor(torch.ones(2, 3, dtype=torch.int32), Q8)
    assert info.value.code == ErrorCode.BAD_DTYPE
    for shape in [(), (1, 1, 1, 1, 2)]:
        with pytest.raises(ProtocolError) as info:
            encode_tensor(torch.ones(shape), Q8)
        assert info.value.code == ErrorCode.BAD_SHAPE
    with pytest.raises(ProtocolError) as info:
        encode_tensor(torch.ones(1, 65536), Q8)
    assert info.value.code == ErrorCode.BAD_SHAPE
    with pytest.raises(ProtocolError):
        encode_body(torch.ones(1, 100), MAX_OUTLIERS + 1)


GOOD = dict(k=1, scales=[0.5, 2.0], index=[2, 0], values=[1000.0, -7.0], q=[2, -4, 0, 0, 127, -127])


def _with(**kw: object) -> bytes:
    return build([2, 3], **{**GOOD, **kw})  # type: ignore[arg-type]


def test_malformed_q8_frames_are_refused_with_a_code() -> None:
    good = _with()
    decode_tensor(good, max_bytes=CAP)
    cases: list[tuple[str, bytes, ErrorCode]] = [
        ("truncated before the outlier count", good[:16 + 3], ErrorCode.BAD_FRAME),
        ("header only", good[:16], ErrorCode.BAD_FRAME),
        ("truncated data", good[:-1], ErrorCode.BAD_FRAME),
        ("trailing byte", good + b"\0", ErrorCode.BAD_FRAME),
        ("one scale too many", _with(scales=[0.5, 2.0, 1.0]), ErrorCode.BAD_FRAME),
        ("one scale too few", _with(scales=[0.5]), ErrorCode.BAD_FRAME),
        ("k larger than the row", _with(k=4, index=[0, 1, 2, 2] * 2, values=[1.0] * 8), ErrorCode.BAD_FRAME),
        ("k above the cap", build([1, 100], k=MAX_OUTLIERS + 1, scales=[1.0], index=list(range(65)),
                                  values=[1.0] * 65, q=[0] * 100), ErrorCode.BAD_FRAME),
        ("k disagrees with the sections", _with(k=2), ErrorCode.BAD_FRAME),
        ("reserved field", _with(reserved=1), ErrorCode.BAD_FRAME),
        ("NaN scale", _with(scales=[float("nan"), 2.0]), ErrorCode.BAD_FRAME),
        ("infinite scale", _with(scales=[0.5, float("inf")]), ErrorCode.BAD_FRAME),
        ("negative scale", _with(scales=[-0.5, 2.0]), ErrorCode.BAD_FRAME),
        ("NaN outlier", _with(values=[float("nan"), -7.0]), ErrorCode.BAD_FRAME),
        ("infinite outlier", _with(values=[1000.0, float("-inf")]), ErrorCode.BAD_FRAME),
        ("outlier index out of range", _with(index=[3, 0]), ErrorCode.BAD_FRAME),
        ("outlier index far out of range", _with(index=[65535, 0]), ErrorCode.BAD_FRAME),
        ("int8 -128", _with(q=[2, -4, 0, 0, 127, -128]), ErrorCode.BAD_FRAME),
        ("int8 set under an outlier", _with(q=[2, -4, 1, 0, 127, -127]), ErrorCode.BAD_FRAME),
        ("decoded value overflows", _with(scales=[3e38, 2.0]), ErrorCode.BAD_FRAME),
        ("frame version", _with()[:4] + bytes([2]) + _with()[5:], ErrorCode.BAD_FRAME),
    ]
    for why, data, code in cases:
        assert _code(data) == code, why


def test_duplicate_and_unordered_outlier_indexes_are_refused() -> None:
    base = dict(k=2, scales=[1.0], values=[5.0, 6.0], q=[0] * 8)
    decode_tensor(build([1, 8], index=[1, 4], **base), max_bytes=CAP)  # type: ignore[arg-type]
    assert _code(build([1, 8], index=[4, 4], **base)) == ErrorCode.BAD_FRAME  # type: ignore[arg-type]
    assert _code(build([1, 8], index=[4, 1], **base)) == ErrorCode.BAD_FRAME  # type: ignore[arg-type]


def test_caps_and_filters_apply_to_q8() -> None:
    good = _with()
    assert _code(good, max_bytes=len(good) - 1) == ErrorCode.TOO_LARGE
    assert _code(good, dtypes=frozenset({torch.float32, torch.float16})) == ErrorCode.BAD_DTYPE
    decode_tensor(good, max_bytes=CAP, dtypes=frozenset({Q8}))
    for junk in (b"VSTF", good[:5] + bytes([99]) + good[6:]):
        with pytest.raises(ProtocolError):
            frame_wire(junk)
    # A last dimension that u16 indexes cannot address.
    wide = b"VSTF" + bytes([1, 5, 2, 0]) + struct.pack("<2I", 1, 70000) + struct.pack("<HH", 0, 0)
    assert _code(wide) == ErrorCode.BAD_SHAPE


def test_huge_declared_shape_does_not_allocate() -> None:
    frame = b"VSTF" + bytes([1, 5, 3, 0]) + struct.pack("<3I", 2**31, 2**31, 1000) + struct.pack("<HH", 16, 0)
    assert _code(frame) == ErrorCode.BAD_FRAME
    frame = b"VSTF" + bytes([1, 5, 2, 0]) + struct.pack("<2I", 2**32 - 1, 0) + struct.pack("<HH", 0, 0)
    assert _code(frame) == ErrorCode.BAD_FRAME  # zero columns but 4 billion rows' scales declared
