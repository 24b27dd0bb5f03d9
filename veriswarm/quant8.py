"""The ``q8`` wire format: 8-bit hidden states that survive the massive outlier channels of LLM activations.

Why not plain int8: the residual stream of SmolLM2 has a few channels that are orders of magnitude larger
than the rest (channel 507 reaches ~23000 on the first token while a typical row's other channels stay
under ~100-700). One absmax scale per tensor spends all 8 bits on those few values and rounds everything
else to a handful of levels (4% greedy top-1 agreement on frames that hold the first token; one scale per
row: 88%). This format takes, **per row** (one row = one token's hidden state), the ``k`` largest-magnitude
values out and sends them exactly (fp32, with their channel index); the remaining channels share one absmax
int8 scale for that row. Per-row (not per-frame) means a token is encoded the same whether it travels in a
prefill or alone in a decode step, so the wire bytes do not depend on how a sequence was chunked. ``k = 16`` was chosen from measurements
(docs/benchmarks.md): on SmolLM2 in 4 shards it keeps the KL to fp32 at 2e-4 for 29% of fp32's bytes,
where k = 4 leaves 4x that and plain per-row int8 (k = 0) 230x.

Error bound (any input): an ordinary channel is off by at most scale/2 = a/254, with a the row's
(k+1)-th largest magnitude, and the k+1 largest values have a norm >= a*sqrt(k+1), so a row's relative
L2 error is at most sqrt(cols - k) / (254 * sqrt(k + 1)) (2.26e-2 for cols = 576, k = 16). The verifier's
q8 tolerance rests on this (verifier/tolerance.py).

Body layout, after the common frame header and dims (frames.py; all little-endian). The tensor is seen as
``rows x cols`` with ``cols = dims[-1]`` and ``rows = prod(dims[:-1])`` (1 for rank 1)::

    k        u16              outliers per row, 0..min(MAX_OUTLIERS, cols)
    reserved u16              must be 0
    scales   rows x f32       finite, >= 0; value = q * scale for ordinary channels
    index    rows x k x u16   outlier channels, strictly increasing within a row (no duplicates), < cols
    value    rows x k x f32   the outliers' exact values, finite
    q        rows x cols x i8 in [-127, 127]; 0 at the row's outlier channels

Every length is implied by (dims, k), so the frame length must match exactly; anything else is refused
with a ProtocolError before any tensor of the declared size is allocated. The format is canonical enough
that a decoded-then-re-encoded tensor comes out (nearly) the same: decode is exact given the bytes, and
the receipt hashes cover the bytes, so the only loss is the encoder's rounding.
"""

from __future__ import annotations

import struct

import torch

from .errors import ErrorCode, ProtocolError

#: the number of outliers per row a sender uses unless told otherwise (chosen from docs/benchmarks.md)
DEFAULT_OUTLIERS = 16
#: the most outliers per row a receiver accepts (bounds the index/value sections relative to the rows)
MAX_OUTLIERS = 64
#: channel indexes are u16
MAX_COLS = 0xFFFF
_BODY = struct.Struct("<HH")
_QMAX = 127


def _bad(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_FRAME, f"q8 frame: {message}")


def geometry(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, cols) of a tensor of this shape as the format sees it."""
    cols = shape[-1]
    rows = 1
    for d in shape[:-1]:
        rows *= d
    return rows, cols


def body_size(rows: int, cols: int, k: int) -> int:
    return _BODY.size + rows * (4 + 6 * k + cols)


def quantize(x: torch.Tensor, k: int = DEFAULT_OUTLIERS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize a [rows, cols] float tensor → (scales f32 [rows], index i64 [rows, k] sorted, values f32
    [rows, k], q i8 [rows, cols]). Raises ProtocolError on non-finite input or an out-of-range k."""
    if x.dim() != 2:
        raise ValueError("quantize takes a [rows, cols] tensor")
    rows, cols = x.shape
    if not 0 <= k <= min(MAX_OUTLIERS, cols):
        raise ProtocolError(ErrorCode.BAD_FRAME, f"q8: {k} outliers per row is outside 0..{min(MAX_OUTLIERS, cols)}")
    if cols > MAX_COLS:
        raise ProtocolError(ErrorCode.BAD_SHAPE, f"q8: last dimension {cols} exceeds {MAX_COLS}")
    x = x.detach().to("cpu", torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ProtocolError(ErrorCode.BAD_FRAME, "q8: cannot encode NaN or infinite values")
    if k:
        index = x.abs().topk(k, dim=1).indices.sort(dim=1).values
        values = x.gather(1, index)
        rest = x.scatter(1, index, 0.0)
    else:
        index = torch.empty(rows, 0, dtype=torch.int64)
        values = torch.empty(rows, 0, dtype=torch.float32)
        rest = x
    scales = rest.abs().amax(dim=1) / _QMAX if cols else torch.zeros(rows)
    # A row whose ordinary channels are all zero (or so small the scale underflows) has scale 0 and q 0;
    # dividing by a zero scale would make NaN.
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round(rest / safe[:, None]).clamp_(-_QMAX, _QMAX)
    q = torch.where(scales[:, None] > 0, q, torch.zeros_like(q)).to(torch.int8)
    return scales, index, values, q


def dequantize(scales: torch.Tensor, index: torch.Tensor, values: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    out = q.to(torch.float32) * scales[:, None]
    if index.shape[1]:
        out.scatter_(1, index, values)
    return out


def encode_body(tensor: torch.Tensor, k: int = DEFAULT_OUTLIERS) -> bytes:
    """The q8 body (everything after the frame's dims) of a float tensor of rank >= 1."""
    shape = tuple(tensor.shape)
    rows, cols = geometry(shape)
    k = min(k, cols)  # a narrow tensor simply sends all its channels exactly
    scales, index, values, q = quantize(tensor.reshape(rows, cols), k)
    return b"".join([
        _BODY.pack(k, 0),
        scales.numpy().astype("<f4").tobytes(),
        index.to(torch.int32).numpy().astype("<u2").tobytes(),
        values.numpy().astype("<f4").tobytes(),
        q.numpy().tobytes(),
    ])


def decode_body(body: memoryview, shape: tuple[int, ...]) -> torch.Tensor:
    """Validate and decode a q8 body for a tensor of ``shape``; returns float32."""
    rows, cols = geometry(shape)
    if cols > MAX_COLS:
        raise ProtocolError(ErrorCode.BAD_SHAPE, f"q8 frame: last dimension {cols} exceeds {MAX_COLS}")
    if len(body) < _BODY.size:
        raise _bad("truncated before its outlier count")
    k, reserved = _BODY.unpack_from(body, 0)
    if reserved != 0:
        raise _bad(f"reserved field must be 0, got {reserved}")
    if k > min(MAX_OUTLIERS, cols):
        raise _bad(f"{k} outliers per row is outside 0..{min(MAX_OUTLIERS, cols)}")
    expected = body_size(rows, cols, k)
    if len(body) != expected:
        raise _bad(f"{len(body)} body bytes but shape {list(shape)} with {k} outliers per row needs {expected}")
    # Copy each section into its own fresh (hence aligned) buffer: the tensors must outlive the request
    # buffer, and an f32 section can start at an odd offset inside the frame.
    off = _BODY.size

    def section(count: int, dtype: torch.dtype, itemsize: int) -> torch.Tensor:
        nonlocal off
        chunk = bytearray(body[off:off + count * itemsize])
        off += count * itemsize
        return torch.frombuffer(chunk, dtype=dtype) if count else torch.empty(0, dtype=dtype)

    scales = section(rows, torch.float32, 4)
    if not bool(torch.isfinite(scales).all()) or bool((scales < 0).any()):
        raise _bad("scales must be finite and non-negative")
    if rows * cols == 0:
        return torch.zeros(shape, dtype=torch.float32)
    index = section(rows * k, torch.int16, 2).view(rows, k).to(torch.int64) & 0xFFFF  # u16 read via i16
    values = section(rows * k, torch.float32, 4).view(rows, k)
    q = section(rows * cols, torch.int8, 1).view(rows, cols)
    if not bool(torch.isfinite(values).all()):
        raise _bad("outlier values contain NaN or infinity")
    if bool((q == -128).any()):
        raise _bad("int8 value -128 is outside the symmetric range [-127, 127]")
    if k:
        if bool((index >= cols).any()):
            raise _bad(f"outlier channel index out of range 0..{cols - 1}")
        if k > 1 and not bool((index[:, 1:] > index[:, :-1]).all()):
            raise _bad("outlier channel indexes must be strictly increasing in each row (no duplicates)")
        if bool(q.gather(1, index).any()):
            raise _bad("int8 values at outlier channels must be 0")
    out = dequantize(scales, index, values, q)
    if not bool(torch.isfinite(out).all()):  # a huge finite scale times 127 can still overflow
        raise _bad("decoded values overflow float32")
    return out.reshape(shape)
