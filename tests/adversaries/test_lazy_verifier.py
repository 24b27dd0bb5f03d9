"""Honeypots: a verifier that re-executes catches the planted fault; a lazy one (approves everything
without computing) is caught approving a known-bad session, and its signed approval slashes its stake on chain."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from veriswarm.incentives.chain import Chain, Deployment, VerifierFaultKind, as_key
from veriswarm.manifest import ModelDir
from veriswarm.receipts import ReceiptDomain
from veriswarm.split.artifacts import load_shard
from veriswarm.verifier.core import Verifier, VerifierConfig
from veriswarm.verifier.honeypot import judge, make_honeypot
from veriswarm.verifier.quorum import VerifierQuorum, Vote
from veriswarm.verifier.reexec import SessionVerdict, StepCheck
from veriswarm.verifier.slashing import ChainSlasher


class LazyVerifier(Verifier):
    """A misbehaving verifier: reports every audited session as passed without re-executing it."""

    def audit_due(self, *, force: bool = False) -> list[SessionVerdict]:
        with self._lock:
            batches = list(self._pending.items())
            self._pending.clear()
        out = []
        for (session, shard, node), pending in batches:
            steps = [StepCheck(s, r.receipt.receipt_id(), 0.0, 1.0) for s, r in sorted(pending.records.items())]
            verdict = SessionVerdict(node, self.manifest.hash, shard, session, steps)
            self.verdicts.append({"node": node, "shard": shard, "session": session, "passed": True,
                                  "summary": "pass (not checked)"})
            out.append(verdict)
        return out


def _pots(tiny_dir: Path, n: int) -> list:  # type: ignore[type-arg]
    md = ModelDir.open(tiny_dir)
    shard = load_shard(md, 1)
    key = os.urandom(32)
    return [make_honeypot(shard, 1, md.manifest.hash, key, domain=ReceiptDomain(), seed=i) for i in range(n)]


def test_an_honest_verifier_catches_every_honeypot(tiny_dir: Path) -> None:
    verifier = Verifier(ModelDir.open(tiny_dir), config=VerifierConfig(audit_rate=1.0))
    pots = _pots(tiny_dir, 5)
    for pot in pots:
        for rec in pot.records:
            verifier.submit(rec)
    found = {v.session_id: v for v in verifier.audit_due(force=True)}
    for pot in pots:
        assert judge(pot, list(verifier.verdicts)) == "caught"
        first = found[pot.session_id].first_failure
        assert first is not None and first.step == pot.planted_step


def test_a_lazy_verifier_is_caught_approving_a_planted_fault(tiny_dir: Path) -> None:
    lazy = LazyVerifier(ModelDir.open(tiny_dir), config=VerifierConfig(audit_rate=1.0))
    pot = _pots(tiny_dir, 1)[0]
    for rec in pot.records:
        lazy.submit(rec)
    lazy.audit_due(force=True)
    assert judge(pot, list(lazy.verdicts)) == "approved"


def test_a_lazy_verifiers_honeypot_approval_is_slashed_on_chain(tiny_dir: Path, devnet: Deployment, chain: Chain,
                                                                 record_property: Any) -> None:
    """The lazy verifier is devnet verifier #0: its signed pass on the honeypot is the evidence; the two others
    sign the VerifierFault (honeypot approval) and Staking.slashVerifier takes 10 % of its stake at once."""
    lazy_account = devnet.verifiers[0]
    lazy = LazyVerifier(ModelDir.open(tiny_dir), config=VerifierConfig(audit_rate=1.0))
    pot = _pots(tiny_dir, 1)[0]
    for rec in pot.records:
        lazy.submit(rec)
    [verdict] = lazy.audit_due(force=True)
    assert judge(pot, list(lazy.verdicts)) == "approved"
    vote = Vote.cast(verdict, as_key(lazy_account.key))

    staking = devnet.staking_contract(chain)
    quorum = VerifierQuorum.from_chain(staking, [v.address for v in devnet.verifiers], penalty_bps=1000,
                                       slasher=ChainSlasher(devnet, devnet.accounts[3].key))
    before = int(staking.call("verifiers", lazy_account.address)["stake"])
    penalty = quorum.penalise_honeypot_approval(vote, pot.session_id, pot.shard_index)
    slashed = penalty.onchain
    assert slashed is not None and slashed.kind == VerifierFaultKind.HONEYPOT_APPROVAL
    assert slashed.amount == penalty.amount == before // 10
    assert int(staking.call("verifiers", lazy_account.address)["stake"]) == before - penalty.amount
    print(f"\nslashVerifier gas: {slashed.gas_used} (honeypot approval, 2 signatures)")
    record_property("slashVerifier_gas", slashed.gas_used)
