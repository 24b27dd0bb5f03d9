"""Slashing on a real anvil, driven from Python: equivocation by anyone, quorum verdicts (jail), unbonding
nodes, vetoes, evidence that cannot be used twice, and verifier stake slashed by the other verifiers."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from tests.deploy.devnet_fixtures import chain, devnet
from veriswarm.incentives.chain import (
    Chain,
    ContractRevert,
    Deployment,
    VerifierFaultKind,
    ensure_registered,
    equivocation_evidence_id,
    quorum_signatures,
    slash_equivocation,
    slash_verifier,
    slash_with_verdict,
    verifier_evidence_id,
    verifier_fault_digest,
    veto_digest,
)
from veriswarm.receipts import Receipt, address_of, hex32

__all__ = ["chain", "devnet"]
MANIFEST = "0x" + "cd" * 32
ETHER = 10**18


def _node(devnet: Deployment, chain: Chain, stake: int = 2 * ETHER, shard: int = 0) -> bytes:
    key = os.urandom(32)
    ensure_registered(devnet, key, endpoint=f"http://127.0.0.1:{9000 + shard}", shard_index=shard,
                      manifest_hash=MANIFEST, stake_wei=stake, chain=chain)
    return key


def _conflicting(key: bytes, devnet: Deployment) -> tuple[Receipt, Receipt]:
    """Two receipts for the same input history (same contextHash) with different outputs, signed by ``key``."""
    base = Receipt(manifest_hash=MANIFEST, shard_index=0, session_id=hex32(os.urandom(32)), step=3, start_pos=9,
                   num_tokens=1, input_hash=hex32(os.urandom(32)), context_hash=hex32(os.urandom(32)),
                   output_hash=hex32(os.urandom(32)), request_nonce=hex32(os.urandom(32)), timestamp_ms=1)
    other = replace(base, output_hash=hex32(os.urandom(32)), request_nonce=hex32(os.urandom(32)), timestamp_ms=2)
    return base.signed(key, devnet.domain), other.signed(key, devnet.domain)


def test_equivocation_is_slashed_by_anyone_and_the_evidence_cannot_be_reused(devnet: Deployment, chain: Chain) -> None:
    key = _node(devnet, chain)
    node = address_of(key)
    staking = devnet.staking_contract(chain)
    a, b = _conflicting(key, devnet)
    reporter = devnet.accounts[3]  # neither a node nor a verifier
    event = slash_equivocation(devnet, reporter.key, a, b, chain=chain)
    assert event["node"] == node and event["reporter"] == reporter.address and event["kind"] == 0
    assert event["amount"] == ETHER  # equivocationSlashBps 5000 of 2 ETH
    assert event["evidenceId"] == equivocation_evidence_id(node, MANIFEST, 0, a.context_hash)
    assert not staking.call("isActive", node) and staking.call("isJailed", node)
    assert staking.call("activeNodes", bytes.fromhex(MANIFEST[2:]), 0)["nodes"] == []
    assert staking.call("getNode", node)["stake"] == ETHER
    # the same equivocation point cannot be slashed again, with these receipts or any other pair
    with pytest.raises(ContractRevert) as err:
        slash_equivocation(devnet, devnet.accounts[2].key, a, b, chain=chain)
    assert err.value.name == "EvidenceAlreadyUsed" and err.value.error is not None
    assert err.value.error.args["evidenceId"] == event["evidenceId"]
    _, c = _conflicting(key, devnet)
    c = replace(c, context_hash=a.context_hash, signature="").signed(key, devnet.domain)
    with pytest.raises(ContractRevert, match="EvidenceAlreadyUsed"):
        slash_equivocation(devnet, devnet.accounts[2].key, b, c, chain=chain)
    # after the veto window anyone finalizes: reporter gets bond + 10%, the node is jailed
    chain.increase_time(int(devnet.params["vetoWindow"]))
    bond = int(devnet.params["challengeBond"])
    staking.transact(devnet.accounts[0].key, "finalizeSlash", event["slashId"])
    assert staking.call("owed", reporter.address) == bond + ETHER // 10
    assert staking.call("owed", devnet.params["treasury"]) == ETHER - ETHER // 10
    before = chain.balance(reporter.address)
    receipt = staking.transact(reporter.key, "withdrawOwed")
    assert chain.balance(reporter.address) == before + bond + ETHER // 10 - receipt.gas_used * chain.gas_price()


def test_receipts_that_do_not_conflict_or_come_from_two_keys_are_refused(devnet: Deployment, chain: Chain) -> None:
    key, other_key = _node(devnet, chain), _node(devnet, chain)
    a, b = _conflicting(key, devnet)
    same_output = replace(b, output_hash=a.output_hash, signature="").signed(key, devnet.domain)
    with pytest.raises(ContractRevert, match="NotConflicting"):
        slash_equivocation(devnet, devnet.accounts[3].key, a, same_output, chain=chain)
    forged = replace(b, signature="").signed(other_key, devnet.domain)
    with pytest.raises(ContractRevert, match="SignerMismatch"):
        slash_equivocation(devnet, devnet.accounts[3].key, a, forged, chain=chain)


def test_quorum_verdict_slashes_and_jails(devnet: Deployment, chain: Chain) -> None:
    key = _node(devnet, chain)
    node = address_of(key)
    staking = devnet.staking_contract(chain)
    evidence = os.urandom(32)
    deadline = chain.timestamp() + 3600
    with pytest.raises(ContractRevert) as err:  # one verifier of three is not a quorum
        slash_with_verdict(devnet, devnet.accounts[3].key, node, evidence, 2500, deadline,
                           [devnet.verifiers[0].key], chain=chain)
    assert err.value.name == "QuorumNotReached"
    event = slash_with_verdict(devnet, devnet.accounts[3].key, node, evidence, 2500, deadline, chain=chain)
    assert event["kind"] == 1 and event["amount"] == ETHER // 2  # 25% of 2 ETH
    assert staking.call("isJailed", node) and not staking.call("isActive", node)
    with pytest.raises(ContractRevert, match="EvidenceAlreadyUsed"):  # same evidence, even with another bps
        slash_with_verdict(devnet, devnet.accounts[3].key, node, evidence, 1000, deadline, chain=chain)
    chain.increase_time(int(devnet.params["vetoWindow"]))
    receipt = staking.transact(devnet.accounts[0].key, "finalizeSlash", event["slashId"])
    executed = staking.events(receipt, "SlashExecuted")[0]
    assert executed["jailedUntil"] == chain.timestamp() + int(devnet.params["jailDuration"])
    assert staking.call("isJailed", node) and not staking.call("isActive", node)
    assert staking.call("slashes", event["slashId"])["status"] == 2  # executed
    chain.increase_time(int(devnet.params["jailDuration"]))
    assert staking.call("isActive", node)  # 1.5 ETH ≥ minStake: listed again once the jail is over
    expired = chain.timestamp() - 1
    with pytest.raises(ContractRevert, match="VerdictExpired"):
        slash_with_verdict(devnet, devnet.accounts[3].key, node, os.urandom(32), 100, expired, chain=chain)


def test_an_unbonding_node_is_still_slashable_and_cannot_leave_while_jailed(devnet: Deployment, chain: Chain) -> None:
    key = _node(devnet, chain)
    node = address_of(key)
    staking = devnet.staking_contract(chain)
    staking.transact(key, "requestUnbond")
    a, b = _conflicting(key, devnet)
    event = slash_equivocation(devnet, devnet.accounts[3].key, a, b, chain=chain)
    assert event["amount"] == ETHER
    chain.increase_time(int(devnet.params["unbondingDelay"]))
    with pytest.raises(ContractRevert, match="NodeJailed"):  # unlocked, but a slash is pending
        staking.transact(key, "withdraw")
    staking.transact(devnet.accounts[0].key, "finalizeSlash", event["slashId"])
    with pytest.raises(ContractRevert, match="NodeJailed"):  # jail period after the executed slash
        staking.transact(key, "withdraw")
    chain.increase_time(int(devnet.params["jailDuration"]))
    before = chain.balance(node)
    receipt = staking.transact(key, "withdraw")
    assert chain.balance(node) == before + ETHER - receipt.gas_used * chain.gas_price()  # what the slash left


def test_the_quorum_can_veto_a_pending_slash(devnet: Deployment, chain: Chain) -> None:
    key = _node(devnet, chain)
    node = address_of(key)
    staking = devnet.staking_contract(chain)
    event = slash_with_verdict(devnet, devnet.accounts[3].key, node, os.urandom(32), 5000, chain.timestamp() + 3600,
                               chain=chain)
    sigs = quorum_signatures(veto_digest(devnet.chain_id, devnet.staking, event["slashId"], event["evidenceId"]),
                             [v.key for v in devnet.verifiers])
    staking.transact(devnet.accounts[0].key, "vetoSlash", event["slashId"], sigs)
    assert staking.call("getNode", node)["stake"] == 2 * ETHER and staking.call("isActive", node)
    assert staking.call("owed", node) == int(devnet.params["challengeBond"])  # the reporter's bond goes to the node
    with pytest.raises(ContractRevert, match="SlashNotPending"):
        staking.transact(devnet.accounts[0].key, "finalizeSlash", event["slashId"])


def test_a_verifier_is_slashed_by_the_other_verifiers_only(devnet: Deployment, chain: Chain) -> None:
    staking = devnet.staking_contract(chain)
    accused, reporter = devnet.verifiers[2], devnet.accounts[3]
    evidence, deadline = os.urandom(32), chain.timestamp() + 3600
    fault = (accused.address, int(VerifierFaultKind.VOTE_AGAINST_OUTCOME), evidence, 1000, deadline)
    assert staking.call("verifierFaultDigest", fault) == verifier_fault_digest(devnet.chain_id, devnet.staking, *fault)
    # its own signature is refused; one other verifier (10 of the 20 ETH left without it) is no quorum
    with pytest.raises(ContractRevert, match="AccusedSigned"):
        slash_verifier(devnet, reporter.key, accused.address, VerifierFaultKind.VOTE_AGAINST_OUTCOME, evidence, 1000,
                       deadline, [v.key for v in devnet.verifiers], chain=chain)
    with pytest.raises(ContractRevert, match="QuorumNotReached"):
        slash_verifier(devnet, reporter.key, accused.address, VerifierFaultKind.VOTE_AGAINST_OUTCOME, evidence, 1000,
                       deadline, [devnet.verifiers[0].key], chain=chain)
    with pytest.raises(ContractRevert, match="VerifierSlashBpsTooHigh"):
        slash_verifier(devnet, reporter.key, accused.address, VerifierFaultKind.VOTE_AGAINST_OUTCOME, evidence, 5001,
                       deadline, chain=chain)
    slashed = slash_verifier(devnet, reporter.key, accused.address, VerifierFaultKind.VOTE_AGAINST_OUTCOME, evidence,
                             1000, deadline, chain=chain)  # default signers: every verifier but the accused
    assert (slashed.verifier, slashed.amount, slashed.remaining_stake) == (accused.address, ETHER, 9 * ETHER)
    assert slashed.left_quorum and slashed.evidence_id == verifier_evidence_id(accused.address, evidence)
    assert int(staking.call("totalVerifierStake")) == 20 * ETHER and int(staking.call("activeVerifierCount")) == 2
    assert int(staking.call("owed", reporter.address)) == slashed.reporter_reward == ETHER // 10
    with pytest.raises(ContractRevert, match="EvidenceAlreadyUsed"):  # still slashable while unbonding, not twice
        slash_verifier(devnet, reporter.key, accused.address, VerifierFaultKind.HONEYPOT_APPROVAL, evidence, 500,
                       deadline, chain=chain)
