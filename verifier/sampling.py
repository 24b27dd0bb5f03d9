"""Unpredictable audit selection with a committed secret (commit–reveal).

Before an epoch the verifier publishes ``commitment = keccak256(secret)``; a session-shard is audited iff
``keccak256(secret ‖ session_id ‖ shard_index) / 2**256 < p`` where p comes from the node's reputation
(incentives.mechanism.audit_probability). A node cannot tell which of its sessions will be audited (it
does not know the secret), and after the reveal anyone can check that the verifier selected honestly
(it cannot have picked its targets after the fact: the secret was fixed by the commitment).

The unit of audit is a (session, shard): re-executing a session checks every step of it at the cost of
one prefill (see reexec.py), so a node that cheats on any step of a session is caught with probability p.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from eth_utils import keccak


@dataclass(frozen=True)
class AuditBeacon:
    secret: bytes = field(default_factory=lambda: os.urandom(32), repr=False)

    @property
    def commitment(self) -> str:
        return "0x" + keccak(self.secret).hex()

    def draw(self, session_id: str, shard_index: int) -> float:
        """A uniform number in [0, 1) that only the holder of the secret can compute before the reveal."""
        digest = keccak(self.secret + bytes.fromhex(session_id[2:]) + shard_index.to_bytes(4, "big"))
        return int.from_bytes(digest, "big") / 2**256

    def selects(self, session_id: str, shard_index: int, probability: float) -> bool:
        return self.draw(session_id, shard_index) < probability

    @staticmethod
    def check_reveal(commitment: str, secret: bytes) -> bool:
        return "0x" + keccak(secret).hex() == commitment.lower()
