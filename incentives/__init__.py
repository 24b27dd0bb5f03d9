"""veriswarm.incentives: the off-chain ledger (SQLAlchemy), the reward/reputation mechanism, settlement."""

from .mechanism import IncentiveParams
from .merkle import MerkleTree

__all__ = ["IncentiveParams", "MerkleTree"]
