"""A minimal, dependency-free ONNX writer for the slice circuits.

ezkl reads ONNX. The slices we prove are one or two matrix products (plus an optional bias), so
instead of pulling in ``onnx``/``onnxscript`` for ``torch.onnx.export`` we write the protobuf by hand:
a few fields of ``ModelProto`` suffice. The output is a deterministic function of the weights, which
matters because the circuit (and so the verifying key) is derived from it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_FLOAT = 1  # TensorProto.DataType.FLOAT
IR_VERSION = 8
OPSET = 13


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _int(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value)


def _bytes(field: int, value: bytes) -> bytes:
    return _key(field, 2) + _varint(len(value)) + value


def _str(field: int, value: str) -> bytes:
    return _bytes(field, value.encode())


def _tensor(name: str, array: np.ndarray) -> bytes:
    a = np.ascontiguousarray(array, dtype="<f4")
    out = b"".join(_int(1, d) for d in a.shape)
    out += _int(2, _FLOAT) + _str(8, name) + _bytes(9, a.tobytes())
    return out


def _value_info(name: str, shape: Sequence[int]) -> bytes:
    dims = b"".join(_bytes(1, _int(1, d)) for d in shape)
    tensor_type = _int(1, _FLOAT) + _bytes(2, dims)
    return _str(1, name) + _bytes(2, _bytes(1, tensor_type))


def _node(op: str, inputs: Sequence[str], outputs: Sequence[str], name: str) -> bytes:
    return b"".join(_str(1, i) for i in inputs) + b"".join(_str(2, o) for o in outputs) + _str(3, name) + _str(4, op)


def matmul_chain(x_shape: Sequence[int], factors: Sequence[np.ndarray], bias: np.ndarray | None = None) -> bytes:
    """ONNX bytes for ``y = x @ factors[0] @ factors[1] … (+ bias)``; each factor is [in, out] (already transposed)."""
    if not factors:
        raise ValueError("need at least one factor")
    nodes: list[bytes] = []
    inits: list[bytes] = []
    cur, width = "x", int(x_shape[-1])
    for i, f in enumerate(factors):
        if f.ndim != 2 or f.shape[0] != width:
            raise ValueError(f"factor {i} has shape {f.shape}, expected ({width}, ·)")
        w = f"w{i}"
        inits.append(_tensor(w, f))
        out = f"h{i}"
        nodes.append(_node("MatMul", [cur, w], [out], f"matmul{i}"))
        cur, width = out, int(f.shape[1])
    if bias is not None:
        if bias.shape != (width,):
            raise ValueError(f"bias has shape {bias.shape}, expected ({width},)")
        inits.append(_tensor("b", bias))
        nodes.append(_node("Add", [cur, "b"], ["y"], "bias"))
        cur = "y"
    y_shape = [*x_shape[:-1], width]
    graph = b"".join(_bytes(1, n) for n in nodes) + _str(2, "slice")
    graph += b"".join(_bytes(5, t) for t in inits)
    graph += _bytes(11, _value_info("x", x_shape)) + _bytes(12, _value_info(cur, y_shape))
    opset = _str(1, "") + _int(2, OPSET)
    return _int(1, IR_VERSION) + _str(2, "veriswarm") + _bytes(7, graph) + _bytes(8, opset)


__all__ = ["matmul_chain"]
