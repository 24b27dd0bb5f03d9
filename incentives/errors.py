"""Errors of the incentive layer (one root, under veriswarm's)."""

from veriswarm.errors import VeriswarmError


class IncentiveError(VeriswarmError):
    """Root of the incentive layer's errors."""


class LedgerError(IncentiveError):
    """The ledger refused an operation (unknown epoch, bad state transition, bad input)."""


class ChainError(IncentiveError):
    """The chain is unreachable, or a transaction failed or reverted."""
