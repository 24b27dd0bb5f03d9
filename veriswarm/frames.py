"""Binary tensor frames: a small fixed header followed by raw little-endian bytes.

Layout (all integers little-endian)::

    magic   4 bytes  b"VSTF"
    version u8       FRAME_VERSION
    dtype   u8       code from DTYPE_CODES
    ndim    u8       1..MAX_NDIM
    flags   u8       reserved, must be 0
    dims    ndim x u32
    data    prod(dims) * itemsize bytes, C order

There is no pickle and no variable-length metadata: a frame is either exactly well formed or
rejected with a :class:`ProtocolError`. Hashes in receipts are taken over these exact bytes.

The ``q8`` wire format (dtype code 5, see quant8.py) replaces the raw data with an outlier-aware 8-bit
encoding; ``torch.qint8`` stands for it in the dtype tables (no tensor of that dtype is ever made:
q8 frames decode to float32, and ``encode_tensor(x, Q8)`` quantizes a float tensor).
"""

from __future__ import annotations

import hashlib
import struct
import sys

import numpy as np
import torch

from . import quant8
from .errors import ErrorCode, ProtocolError

MAGIC = b"VSTF"
FRAME_VERSION = 1
MAX_NDIM = 4
_HEAD = struct.Struct("<4sBBBB")
#: the marker dtype of the q8 wire format
Q8 = torch.qint8

DTYPE_CODES: dict[torch.dtype, int] = {torch.float32: 1, torch.float16: 2, torch.bfloat16: 3, torch.int8: 4, Q8: 5}
CODE_DTYPES: dict[int, torch.dtype] = {v: k for k, v in DTYPE_CODES.items()}
DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int8": torch.int8,
    "q8": Q8,
}

#: how a frame's data is viewed in numpy (bfloat16 has no numpy dtype: its raw 16-bit words)
_NUMPY: dict[torch.dtype, type[np.generic]] = {torch.float32: np.float32, torch.float16: np.float16,
                                               torch.bfloat16: np.uint16, torch.int8: np.int8}

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("veriswarm frames assume a little-endian host")


def dtype_name(dtype: torch.dtype) -> str:
    for name, dt in DTYPE_NAMES.items():
        if dt == dtype:
            return name
    raise ProtocolError(ErrorCode.BAD_DTYPE, f"dtype {dtype} is not supported on the wire")


def encode_tensor(tensor: torch.Tensor, wire: torch.dtype | None = None) -> bytes:
    """Encode a CPU tensor as a frame, converted to ``wire`` (default: its own dtype; one of DTYPE_CODES;
    ``Q8`` quantizes a float tensor to the q8 format)."""
    if wire == Q8:
        if not tensor.is_floating_point():
            raise ProtocolError(ErrorCode.BAD_DTYPE, f"q8 encodes float tensors, not {tensor.dtype}")
        if not 1 <= tensor.dim() <= MAX_NDIM:
            raise ProtocolError(ErrorCode.BAD_SHAPE, f"tensor rank {tensor.dim()} is outside 1..{MAX_NDIM}")
        head = _HEAD.pack(MAGIC, FRAME_VERSION, DTYPE_CODES[Q8], tensor.dim(), 0)
        return head + struct.pack(f"<{tensor.dim()}I", *tensor.shape) + quant8.encode_body(tensor)
    # Each conversion only when needed: see decode_tensor on what a torch call costs right after a forward.
    t = tensor if wire is None or tensor.dtype == wire else tensor.to(wire)
    if t.dtype not in DTYPE_CODES or t.dtype == Q8:
        raise ProtocolError(ErrorCode.BAD_DTYPE, f"dtype {t.dtype} is not supported on the wire")
    ndim = t.dim()
    if not 1 <= ndim <= MAX_NDIM:
        raise ProtocolError(ErrorCode.BAD_SHAPE, f"tensor rank {ndim} is outside 1..{MAX_NDIM}")
    if t.device.type != "cpu":
        t = t.cpu()
    if t.requires_grad:
        t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    head = _HEAD.pack(MAGIC, FRAME_VERSION, DTYPE_CODES[t.dtype], ndim, 0)
    dims = struct.pack(f"<{ndim}I", *t.shape)
    # bfloat16 has no numpy dtype: view the storage as int16 to get at the raw bytes.
    raw = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()
    return head + dims + raw


def decode_tensor(
    data: bytes | bytearray | memoryview,
    *,
    max_bytes: int,
    dtypes: frozenset[torch.dtype] | None = None,
) -> torch.Tensor:
    """Decode and validate a frame. Raises ProtocolError with a one-line reason on any defect."""
    buf = memoryview(data)
    if len(buf) > max_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"frame of {len(buf)} bytes exceeds the cap of {max_bytes}")
    if len(buf) < _HEAD.size:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"frame truncated: {len(buf)} bytes is shorter than its header")
    magic, version, code, ndim, flags = _HEAD.unpack_from(buf, 0)
    if magic != MAGIC:
        raise ProtocolError(ErrorCode.BAD_FRAME, "not a tensor frame (bad magic)")
    if version != FRAME_VERSION:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"unsupported frame version {version}")
    if flags != 0:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"reserved frame flags must be 0, got {flags}")
    if code not in CODE_DTYPES:
        raise ProtocolError(ErrorCode.BAD_DTYPE, f"unknown dtype code {code}")
    dtype = CODE_DTYPES[code]
    if dtypes is not None and dtype not in dtypes:
        allowed = ", ".join(sorted(dtype_name(d) for d in dtypes))
        raise ProtocolError(ErrorCode.BAD_DTYPE, f"dtype {dtype_name(dtype)} not accepted here (allowed: {allowed})")
    if not 1 <= ndim <= MAX_NDIM:
        raise ProtocolError(ErrorCode.BAD_SHAPE, f"tensor rank {ndim} is outside 1..{MAX_NDIM}")
    dims_end = _HEAD.size + 4 * ndim
    if len(buf) < dims_end:
        raise ProtocolError(ErrorCode.BAD_FRAME, "frame truncated inside its shape")
    shape = struct.unpack_from(f"<{ndim}I", buf, _HEAD.size)
    if dtype == Q8:
        return quant8.decode_body(buf[dims_end:], shape)
    numel = 1
    for d in shape:
        numel *= d
    expected = dims_end + numel * dtype.itemsize
    if len(buf) != expected:
        raise ProtocolError(
            ErrorCode.BAD_FRAME,
            f"frame has {len(buf)} bytes but shape {list(shape)} of {dtype_name(dtype)} needs {expected}",
        )
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    # Validated and viewed in numpy, one torch call at the end: on a node this runs right after a forward
    # has evicted the caches, where each torch dispatch costs tens of microseconds.
    values = np.frombuffer(bytearray(buf[dims_end:]), dtype=_NUMPY[dtype]).reshape(shape)  # own the bytes
    if dtype == torch.bfloat16:
        finite = not bool(((values & 0x7F80) == 0x7F80).any())  # exponent all ones: NaN or infinite
    else:
        finite = dtype == torch.int8 or bool(np.isfinite(values).all())
    if not finite:
        raise ProtocolError(ErrorCode.BAD_FRAME, "frame contains NaN or infinite values")
    out = torch.from_numpy(values)
    return out.view(torch.bfloat16) if dtype == torch.bfloat16 else out


def frame_dims(data: bytes | bytearray | memoryview) -> tuple[int, ...] | None:
    """The shape a frame's header declares, read from the header alone (None if it has none); a
    scheduling hint only: decode_tensor is what validates a frame."""
    if len(data) < _HEAD.size:
        return None
    ndim = data[6]
    if not 1 <= ndim <= MAX_NDIM or len(data) < _HEAD.size + 4 * ndim:
        return None
    return struct.unpack_from(f"<{ndim}I", data, _HEAD.size)


def frame_wire(data: bytes | bytearray | memoryview) -> torch.dtype:
    """The wire dtype a frame declares (``Q8`` for a q8 frame): what a node answers in. Only the header is
    read; call it on a frame that decode_tensor has accepted."""
    if len(data) < _HEAD.size or (code := data[5]) not in CODE_DTYPES:
        raise ProtocolError(ErrorCode.BAD_FRAME, "not a tensor frame with a known dtype")
    return CODE_DTYPES[code]


def sha256(data: bytes | bytearray | memoryview) -> bytes:
    return hashlib.sha256(data).digest()
