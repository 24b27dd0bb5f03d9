"""Unpredictable audit selection with a committed secret (commit–reveal).

Before an epoch the verifier publishes ``commitment = keccak256(secret)``; step k of a session on a shard
is selected iff ``keccak256(secret ‖ session_id ‖ shard_index ‖ k) / 2**256 < p``, where p comes from the
node's reputation (incentives.mechanism.audit_probability). A node cannot tell which steps will be
selected (it does not know the secret), and after the reveal anyone can check that the verifier selected
honestly (the secret was fixed by the commitment, so targets cannot be picked after the fact).

When any step of a session is selected, the verifier re-executes the whole session on that shard: that
costs one prefill over the session's inputs (see reexec.py) and checks every step, the selected one
included. A node that cheats on a step is therefore caught with probability at least p per cheated step.
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

    def draw(self, session_id: str, shard_index: int, step: int) -> float:
        """A uniform number in [0, 1) that only the holder of the secret can compute before the reveal."""
        digest = keccak(self.secret + bytes.fromhex(session_id[2:]) + shard_index.to_bytes(4, "big")
                        + step.to_bytes(4, "big"))
        return int.from_bytes(digest, "big") / 2**256

    def selected_steps(self, session_id: str, shard_index: int, steps: int, probability: float) -> list[int]:
        return [k for k in range(steps) if self.draw(session_id, shard_index, k) < probability]

    @staticmethod
    def check_reveal(commitment: str, secret: bytes) -> bool:
        return "0x" + keccak(secret).hex() == commitment.lower()
