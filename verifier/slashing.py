"""Turn proven faults into on-chain slashes (Staking.slashWithVerdict / slashEquivocation for nodes,
Staking.slashVerifier for verifiers).

On the devnet the verifier quorum's keys are all in the deployment file, so one process can gather the
quorum signature; in production each verifier signs the verdict digest and the signatures are collected
(the contract checks ≥ 2/3 of active verifier stake either way).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_utils import keccak

from veriswarm.incentives.chain import (
    Deployment,
    VerifierFaultKind,
    VerifierSlash,
    slash_equivocation,
    slash_verifier,
    slash_with_verdict,
)
from veriswarm.receipts import Receipt

log = logging.getLogger("veriswarm.verifier")


@dataclass
class ChainSlasher:
    deployment: Deployment
    reporter_key: str
    slash_bps: int = 5000  # share of the node's stake a fault verdict takes
    deadline_s: int = 3600

    def verdict(self, node: str, evidence: Receipt, summary: str) -> dict[str, Any]:
        """Slash for a re-execution fault; the evidence hash commits to the failing receipt and the finding."""
        chain = self.deployment.chain()
        evidence_hash = keccak(evidence.struct_hash() + bytes.fromhex(evidence.signature[2:]) + summary.encode())
        deadline = chain.timestamp() + self.deadline_s
        event = slash_with_verdict(self.deployment, self.reporter_key, node, evidence_hash, self.slash_bps, deadline,
                                   chain=chain)
        log.warning("slash proposed on chain for %s: %s", node, event)
        return event

    def equivocation(self, first: Receipt, second: Receipt) -> dict[str, Any]:
        event = slash_equivocation(self.deployment, self.reporter_key, first, second)
        log.warning("equivocation slash proposed on chain: %s", event)
        return event

    def verifier_fault(self, verifier: str, kind: VerifierFaultKind, evidence_hash: bytes, slash_bps: int,
                       signer_keys: Sequence[str | bytes] | None = None) -> VerifierSlash:
        """Slash a verifier's stake (``Staking.slashVerifier``), signed by the other verifiers: ``signer_keys``, or
        on the devnet every deployment verifier but the accused."""
        chain = self.deployment.chain()
        deadline = chain.timestamp() + self.deadline_s
        slashed = slash_verifier(self.deployment, self.reporter_key, verifier, kind, evidence_hash, slash_bps, deadline,
                                 signer_keys, chain=chain)
        log.warning("verifier %s slashed on chain (%s): %d wei, %d wei left%s", verifier, kind.name.lower(),
                    slashed.amount, slashed.remaining_stake, ", out of the quorum" if slashed.left_quorum else "")
        return slashed
