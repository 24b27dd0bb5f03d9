"""The cross-language EIP-712 vector (contracts/test/vectors/receipt_vector.json), byte for byte, and the
deployed contracts' own digests against the Python ones."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from tests.deploy.devnet_fixtures import chain, devnet
from veriswarm.incentives.chain import (
    Chain,
    Deployment,
    quorum_signatures,
    receipt_tuple,
    settlement_digest,
    sign_digest,
    verdict_digest,
    veto_digest,
)
from veriswarm.receipts import DOMAIN_TYPE, RECEIPT_TYPE, RECEIPT_TYPEHASH, Receipt, ReceiptDomain, address_of, hex32

__all__ = ["chain", "devnet"]
VECTOR = json.loads((Path(__file__).resolve().parents[2] / "contracts/test/vectors/receipt_vector.json").read_text())
FIELDS = {"manifestHash": "manifest_hash", "shardIndex": "shard_index", "sessionId": "session_id", "step": "step",
          "startPos": "start_pos", "numTokens": "num_tokens", "inputHash": "input_hash", "contextHash": "context_hash",
          "outputHash": "output_hash", "requestNonce": "request_nonce", "timestampMs": "timestamp_ms"}


def _receipt(message: dict[str, Any]) -> Receipt:
    return Receipt(**{FIELDS[k]: v for k, v in message.items()})


def _domain() -> ReceiptDomain:
    d = VECTOR["domain"]
    return ReceiptDomain(d["chainId"], d["verifyingContract"].lower())


def test_type_strings_and_domain_separator_match_the_vector() -> None:
    assert RECEIPT_TYPE == VECTOR["receiptTypeString"] and DOMAIN_TYPE == VECTOR["domainTypeString"]
    assert hex32(RECEIPT_TYPEHASH) == VECTOR["receiptTypeHash"]
    assert hex32(_domain().separator()) == VECTOR["domainSeparator"]


@pytest.mark.parametrize("name", ["receiptA", "receiptB"])
def test_receipt_digest_and_signature_match_the_vector_byte_for_byte(name: str) -> None:
    item = VECTOR[name]
    key = bytes.fromhex(VECTOR["privateKey"][2:])
    r = _receipt(item["message"])
    assert hex32(r.struct_hash()) == item["structHash"]
    assert hex32(r.digest(_domain())) == item["digest"]
    signed = r.signed(key, _domain())
    assert signed.signature == item["signature"]  # RFC 6979 signatures are deterministic
    assert signed.signer(_domain()) == VECTOR["signer"] == address_of(key)
    # and eth-account's generic EIP-712 encoder agrees with the hand-built digest
    types = {"Receipt": [{"name": k, "type": t} for k, t in zip(
        FIELDS, ["bytes32", "uint32", "bytes32", "uint32", "uint32", "uint32", "bytes32", "bytes32", "bytes32",
                 "bytes32", "uint64"], strict=True)]}
    message = {k: bytes.fromhex(v[2:]) if isinstance(v, str) else v for k, v in item["message"].items()}
    via_eth_account = Account.sign_typed_data(key, VECTOR["domain"], types, message)
    assert "0x" + bytes(via_eth_account.signature).hex() == item["signature"]


def test_verdict_digest_and_signature_match_the_vector() -> None:
    v = VECTOR["verdict"]
    m = v["message"]
    d = VECTOR["domain"]
    digest = verdict_digest(d["chainId"], d["verifyingContract"], m["node"], bytes.fromhex(m["evidenceHash"][2:]),
                            m["slashBps"], m["deadline"])
    assert hex32(digest) == v["digest"]
    assert "0x" + sign_digest(v["verifierPrivateKey"], digest).hex() == v["signature"]


def test_a_changed_field_changes_the_digest() -> None:
    r = _receipt(VECTOR["receiptA"]["message"])
    other = Receipt(**{**r.__dict__, "step": r.step + 1})
    assert other.digest(_domain()) != r.digest(_domain())


def test_deployed_contracts_compute_the_same_digests(devnet: Deployment, chain: Chain) -> None:
    staking, rewards = devnet.staking_contract(chain), devnet.rewards_contract(chain)
    assert staking.call("domainSeparator") == devnet.domain.separator()
    r = _receipt(VECTOR["receiptA"]["message"])
    assert staking.call("receiptDigest", receipt_tuple(r)) == r.digest(devnet.domain)
    node, evidence = devnet.accounts[0].address, os.urandom(32)
    assert staking.call("verdictDigest", (node, evidence, 2500, 1_800_000_000)) == verdict_digest(
        devnet.chain_id, devnet.staking, node, evidence, 2500, 1_800_000_000)
    assert staking.call("vetoDigest", 7, evidence) == veto_digest(devnet.chain_id, devnet.staking, 7, evidence)
    root = os.urandom(32)
    digest = settlement_digest(devnet.chain_id, devnet.rewards, 3, root, 10**18)
    assert rewards.call("settlementDigest", 3, root, 10**18) == digest
    # and the quorum accepts the Python signatures (sorted by signer), rejecting them unsorted
    sigs = quorum_signatures(digest, [v.key for v in devnet.verifiers])
    assert staking.call("checkQuorum", digest, sigs) == 3 * 10 * 10**18
    from veriswarm.incentives.chain import ContractRevert

    with pytest.raises(ContractRevert) as err:
        staking.call("checkQuorum", digest, list(reversed(sigs)))
    assert err.value.name == "SignersNotSorted"
