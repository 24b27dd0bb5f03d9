"""A colluding node–verifier pair: the verifier approves its friend's faulty sessions without checking
(and re-executes everyone else's honestly, so honeypots from other keys do not expose it). Three verifiers
of equal stake vote; the two honest ones hold 2/3 of the stake, so the fault is decided, slashed on a real
anvil with their signatures alone, the colluder cannot veto it, and its signed dissenting vote costs it part
of its bond: booked off chain and slashed on chain (``Staking.slashVerifier``, signed by the two others)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from eth_utils import keccak

from veriswarm.incentives.chain import (
    Chain,
    ContractRevert,
    Deployment,
    VerifierFaultKind,
    as_key,
    ensure_registered,
    quorum_signatures,
    slash_with_verdict,
    verifier_evidence_id,
    veto_digest,
)
from veriswarm.manifest import ModelDir
from veriswarm.receipts import ReceiptDomain, address_of
from veriswarm.split.artifacts import load_shard
from veriswarm.verifier.core import Verifier, VerifierConfig
from veriswarm.verifier.honeypot import judge, make_honeypot, signed_session
from veriswarm.verifier.quorum import QuorumError, VerifierQuorum, Vote, group_votes, votes_of
from veriswarm.verifier.reexec import SessionVerdict, StepCheck
from veriswarm.verifier.slashing import ChainSlasher

ETHER = 10**18


class ColludingVerifier(Verifier):
    """Approves every session of ``friend`` without re-executing it; audits everyone else honestly."""

    def __init__(self, *args: Any, friend: str, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.friend = friend.lower()

    def audit_due(self, *, force: bool = False) -> list[SessionVerdict]:
        with self._lock:
            mine = {k: p for k, p in self._pending.items() if k[2].lower() == self.friend}
            for k in mine:
                del self._pending[k]
        out = [SessionVerdict(node, self.manifest.hash, shard, session,
                              [StepCheck(s, r.receipt.receipt_id(), 0.0, 1.0) for s, r in sorted(p.records.items())])
               for (session, shard, node), p in mine.items()]
        return out + super().audit_due(force=force)


def test_a_colluding_verifier_is_outvoted_by_stake_and_penalised(tiny_dir: Path, devnet: Deployment, chain: Chain,
                                                                 record_property: Any) -> None:
    md = ModelDir.open(tiny_dir)
    shard = load_shard(md, 1)
    staking = devnet.staking_contract(chain)
    faulty_key, honest_key = os.urandom(32), os.urandom(32)
    for key in (faulty_key, honest_key):
        ensure_registered(devnet, key, endpoint="http://127.0.0.1:9", shard_index=1, manifest_hash=md.manifest.hash,
                          stake_wei=2 * ETHER, chain=chain)
    faulty = address_of(faulty_key)
    # The faulty node's session (a wrong output signed at step 2), an honest node's session, and a honeypot
    # under a third key: every verifier gets all of them, as from clients' sinks.
    bad = make_honeypot(shard, 1, md.manifest.hash, faulty_key, domain=devnet.domain, planted_step=2, seed=5)
    g = torch.Generator().manual_seed(7)
    good, _ = signed_session(shard, 1, md.manifest.hash, torch.randn(1, 10, 64, generator=g) * 3, 6, honest_key,
                             domain=devnet.domain)
    pot = make_honeypot(shard, 1, md.manifest.hash, os.urandom(32), domain=devnet.domain, seed=8)

    keys = [as_key(v.key) for v in devnet.verifiers]
    assert len(keys) == 3
    verifiers = [Verifier(md, domain=devnet.domain, config=VerifierConfig(audit_rate=1.0)) for _ in range(2)]
    verifiers.append(ColludingVerifier(md, domain=devnet.domain, config=VerifierConfig(audit_rate=1.0), friend=faulty))
    votes: list[Vote] = []
    for key, v in zip(keys, verifiers, strict=True):
        for rec in [*bad.records, *good, *pot.records]:
            v.submit(rec)
        verdicts = v.audit_due(force=True)
        assert judge(pot, list(v.verdicts)) == "caught"  # the colluder looks honest to honeypots
        votes += votes_of(verdicts, key)

    reporter = devnet.accounts[3]
    quorum = VerifierQuorum.from_chain(staking, [v.address for v in devnet.verifiers], penalty_bps=2000,
                                       slasher=ChainSlasher(devnet, reporter.key))
    assert len(quorum.stakes) == 3 and len(set(quorum.stakes.values())) == 1  # equal stakes: 1/3 each
    stake_before = dict(quorum.stakes)
    outcomes = {key[2]: quorum.decide(vs) for key, vs in group_votes(votes).items()}
    colluder = devnet.verifiers[2].address

    fault = outcomes[bad.session_id]
    assert fault.outcome == "fault" and 3 * fault.fault_stake == 2 * fault.total_stake
    assert [v.verifier for v in fault.dissenters] == [colluder] and fault.dissenters[0].passed
    assert outcomes[good[0].receipt.session_id].outcome == "pass"
    assert outcomes[pot.session_id].outcome == "fault" and not outcomes[pot.session_id].dissenters

    # On chain: the winners' signatures alone are a quorum for the slash; the colluder alone cannot veto it.
    [evidence] = {v.evidence for v in fault.winners}
    deadline = chain.timestamp() + 3600
    winners = [k for k, addr in zip(keys, (v.address for v in devnet.verifiers), strict=True)
               if addr in {v.verifier for v in fault.winners}]
    event = slash_with_verdict(devnet, devnet.accounts[3].key, faulty, keccak(hexstr=evidence), 5000, deadline,
                               winners, chain=chain)
    assert staking.call("isJailed", faulty) and not staking.call("isActive", faulty)
    with pytest.raises(ContractRevert, match="QuorumNotReached"):
        sigs = quorum_signatures(veto_digest(devnet.chain_id, devnet.staking, event["slashId"], event["evidenceId"]),
                                 [keys[2]])
        staking.transact(devnet.accounts[0].key, "vetoSlash", event["slashId"], sigs)
    with pytest.raises(ContractRevert, match="QuorumNotReached"):  # nor slash anyone on its own
        slash_with_verdict(devnet, devnet.accounts[3].key, address_of(honest_key), os.urandom(32), 5000, deadline,
                           [keys[2]], chain=chain)

    # The colluder's own signed vote against the decided fault is the evidence of its penalty: booked here and
    # slashed on chain with a VerifierFault signed by the two others (its own stake out of the quorum).
    total_before = int(staking.call("totalVerifierStake"))
    treasury_before = int(staking.call("owed", devnet.params["treasury"]))
    [penalty] = quorum.settle(fault)
    assert penalty.verifier == colluder and penalty.vote.signer() == colluder and penalty.vote.passed
    assert penalty.amount == stake_before[colluder] // 5
    assert penalty.kind == VerifierFaultKind.VOTE_AGAINST_OUTCOME and not penalty.onchain_error
    slashed = penalty.onchain
    assert slashed is not None and slashed.verifier == colluder and slashed.amount == penalty.amount
    record = staking.call("verifiers", colluder)
    assert int(record["stake"]) == stake_before[colluder] - penalty.amount == slashed.remaining_stake
    # 10 ETH - 20 % < minVerifierStake (10 ETH): the colluder also left the quorum (unbonding, still slashable)
    assert slashed.left_quorum and int(record["status"]) == 3 and colluder not in quorum.stakes
    assert int(staking.call("totalVerifierStake")) == total_before - stake_before[colluder]
    assert staking.call("evidenceUsed", verifier_evidence_id(colluder, penalty.vote.digest()))
    assert slashed.reporter == reporter.address
    assert int(staking.call("owed", reporter.address)) == slashed.reporter_reward == penalty.amount // 10
    assert int(staking.call("owed", devnet.params["treasury"])) - treasury_before == penalty.amount - slashed.reporter_reward
    print(f"\nslashVerifier gas: {slashed.gas_used} (2 signatures, verifier left the quorum)")
    record_property("slashVerifier_gas", slashed.gas_used)
    assert all(quorum.stakes[v.address] == stake_before[v.address] for v in devnet.verifiers[:2])
    # The same vote cannot be slashed twice: the chain refuses the evidence, the book records why.
    [again] = quorum.settle(fault)
    assert again.onchain is None and "EvidenceAlreadyUsed" in again.onchain_error and again.amount == 0
    assert int(staking.call("verifiers", colluder)["stake"]) == slashed.remaining_stake
    assert quorum.settle(outcomes[good[0].receipt.session_id]) == []  # nobody dissented on the honest session


def test_votes_must_be_signed_by_an_active_verifier_once(tiny_dir: Path) -> None:
    md = ModelDir.open(tiny_dir)
    pot = make_honeypot(load_shard(md, 1), 1, md.manifest.hash, os.urandom(32), domain=ReceiptDomain(), seed=9)
    verifier = Verifier(md, config=VerifierConfig(audit_rate=1.0))
    for rec in pot.records:
        verifier.submit(rec)
    [verdict] = verifier.audit_due(force=True)
    a, b, outsider = os.urandom(32), os.urandom(32), os.urandom(32)
    quorum = VerifierQuorum({address_of(a): 9, address_of(b): 6})
    vote = Vote.cast(verdict, a)
    assert quorum.decide([vote]).outcome == "undecided"  # 9 of 15 < 2/3
    assert quorum.decide([vote, Vote.cast(verdict, b)]).outcome == "fault"
    with pytest.raises(QuorumError, match="not an active verifier"):
        quorum.decide([Vote.cast(verdict, outsider)])
    with pytest.raises(QuorumError, match="voted twice"):
        quorum.decide([vote, vote])
    forged = Vote(**{**vote.__dict__, "passed": True})
    with pytest.raises(QuorumError, match="signed by"):
        quorum.decide([forged])
