"""One exception root for veriswarm, with machine-readable codes for the wire.

Every error that crosses a process boundary carries an :class:`ErrorCode`; the HTTP status
for each code is defined here and nowhere else.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    BAD_JSON = "bad_json"
    BAD_FRAME = "bad_frame"
    BAD_SHAPE = "bad_shape"
    BAD_DTYPE = "bad_dtype"
    TOO_LARGE = "too_large"
    PROTOCOL_VERSION = "protocol_version"
    MANIFEST_MISMATCH = "manifest_mismatch"
    WRONG_SHARD = "wrong_shard"
    UNKNOWN_SESSION = "unknown_session"
    SESSION_EXISTS = "session_exists"
    STEP_OUT_OF_ORDER = "step_out_of_order"
    CONTEXT_OVERFLOW = "context_overflow"
    CAPACITY = "capacity"
    NOT_FOUND = "not_found"
    RELAY_FAILED = "relay_failed"
    FORBIDDEN = "forbidden"
    INTERNAL = "internal"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.BAD_JSON: 400,
    ErrorCode.BAD_FRAME: 400,
    ErrorCode.BAD_SHAPE: 422,
    ErrorCode.BAD_DTYPE: 422,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.PROTOCOL_VERSION: 400,
    ErrorCode.MANIFEST_MISMATCH: 409,
    ErrorCode.WRONG_SHARD: 409,
    ErrorCode.UNKNOWN_SESSION: 404,
    ErrorCode.SESSION_EXISTS: 409,
    ErrorCode.STEP_OUT_OF_ORDER: 409,
    ErrorCode.CONTEXT_OVERFLOW: 422,
    ErrorCode.CAPACITY: 503,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.RELAY_FAILED: 502,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.INTERNAL: 500,
}


class VeriswarmError(Exception):
    """Root of every error veriswarm raises on purpose."""


class ConfigError(VeriswarmError):
    """A configuration value, file or flag is missing or invalid."""


class ManifestError(VeriswarmError):
    """A manifest or shard artifact is malformed or does not match its hash."""


class ReceiptError(VeriswarmError):
    """A receipt is malformed, badly signed, or does not match the frames it covers."""


class NodeKeyError(VeriswarmError):
    """A node key file is missing, unreadable or the password is wrong."""


class ProtocolError(VeriswarmError):
    """A peer sent something the protocol does not allow. Carries a wire error code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"


class RemoteError(VeriswarmError):
    """A node answered with a protocol error, or the transport to it failed."""

    def __init__(self, node: str, code: str, message: str) -> None:
        super().__init__(f"{node}: {code}: {message}")
        self.node = node
        self.code = code
        self.message = message
