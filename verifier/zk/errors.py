"""The zk verifier's error type."""

from __future__ import annotations

from veriswarm.errors import VeriswarmError


class ProofError(VeriswarmError):
    """A slice proof, its slice or its bindings were rejected (or could not be produced). One-line message."""
