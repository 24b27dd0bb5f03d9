"""The settlement job: one epoch's allocations → Merkle root → verifier-quorum signatures → ``Rewards.settle``.

Idempotent and crash-safe. Every step is either a ledger transaction or a chain transaction, and each is
checked before it is redone:

1. ``allocated`` — ``Ledger.allocate_epoch`` fixes the amounts and the root once (a re-run reads them back,
   so the root never changes and no receipt recorded for the epoch is dropped or counted twice);
2. ``signed`` — the verifiers sign ``Settlement(epoch, root, total)`` in the Rewards domain (sorted by signer
   address, as ``checkQuorum`` requires); the signatures are stored with ``mark_signed``;
3. before sending, the chain is asked whether the epoch already has a root: if it has *this* root (a crash
   after sending and before recording), the existing settlement is recorded and nothing is sent; a
   different root is an error. The contract itself accepts one settlement per epoch (strictly increasing
   epochs), so no interleaving can pay an epoch twice;
4. ``sent`` / ``mined`` — the transaction is sent and its receipt awaited;
5. ``posted`` — ``mark_posted`` records the transaction.

For crash tests, ``VERISWARM_SETTLE_PAUSE_AT=<stage>`` makes the job print ``settlement paused at <stage>``
and sleep at that stage boundary until it is killed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from eth_utils import to_checksum_address

from veriswarm.receipts import address_of

from .chain import Chain, ContractRevert, Deployment, TxReceipt, as_key, quorum_signatures, settlement_digest
from .errors import ChainError, LedgerError
from .ledger import EpochAllocation, Ledger

PAUSE_ENV = "VERISWARM_SETTLE_PAUSE_AT"
STAGES = ("allocated", "signed", "sent", "mined", "posted")
ZERO32 = bytes(32)


@dataclass(frozen=True)
class SettlementResult:
    epoch: int
    root: str
    total: int
    nodes: int
    tx_hash: str
    #: "sent" (this run posted it), "recovered" (found on chain, recorded now), "recorded" (nothing to do)
    outcome: str
    gas_used: int | None = None

    def line(self) -> str:
        gas = f", gas {self.gas_used}" if self.gas_used is not None else ""
        return (f"epoch {self.epoch} settled ({self.outcome}): root {self.root}, total {self.total} wei over "
                f"{self.nodes} node(s), tx {self.tx_hash}{gas}")


def checkpoint(stage: str) -> None:
    """Pause here (until killed) when the crash-test hook names this stage."""
    if os.environ.get(PAUSE_ENV) == stage:
        print(f"settlement paused at {stage}", flush=True)
        while True:
            time.sleep(3600)


def _b32(value: str) -> bytes:
    return bytes.fromhex(value[2:])


def settle_epoch(ledger: Ledger, deployment: Deployment, epoch: int, pool: int | None = None, *,
                 chain: Chain | None = None, submitter_key: str | bytes | None = None,
                 verifier_keys: list[str] | None = None, current_epoch: int | None = None) -> SettlementResult:
    """Allocate (if needed), sign, post and record epoch ``epoch``. Safe to re-run after a crash at any point."""
    if epoch < 1:
        raise LedgerError("on-chain epochs start at 1")
    delay = ledger.params.payout_delay_epochs
    if current_epoch is not None and epoch > current_epoch - delay:
        raise LedgerError(f"epoch {epoch} is inside the payout delay ({delay} epoch(s)) at epoch {current_epoch}: "
                          "wait so that late faults can still cut its rewards")
    chain = chain or deployment.chain()
    if chain.chain_id != deployment.chain_id:  # also the first contact: a chain that is down fails here
        raise ChainError(f"the chain at {deployment.rpc_url} has id {chain.chain_id}, the deployment says "
                         f"{deployment.chain_id}")
    rewards = deployment.rewards_contract(chain)
    alloc = ledger.epoch(epoch)
    if alloc is None or pool is not None:
        if pool is None:
            raise LedgerError(f"epoch {epoch} is not allocated yet: give the reward pool for it")
        alloc = ledger.allocate_epoch(epoch, pool)  # idempotent; refuses a different pool
    checkpoint("allocated")
    if alloc.status == "posted":
        return _result(alloc, str(alloc.tx_hash), "recorded")
    root = _b32(alloc.root)

    recovered = _already_settled(ledger, deployment, chain, alloc)
    if recovered is not None:
        return recovered

    if alloc.status == "allocated":
        digest = settlement_digest(chain.chain_id, rewards.address, epoch, root, alloc.total)
        if rewards.call("settlementDigest", epoch, root, alloc.total) != digest:
            raise ChainError("the Rewards contract computes another settlement digest than this job (EIP-712 mismatch)")
        keys = verifier_keys if verifier_keys is not None else [v.key for v in deployment.verifiers]
        if not keys:
            raise ChainError("no verifier keys to sign the settlement (the deployment lists none)")
        ledger.mark_signed(epoch, ["0x" + s.hex() for s in quorum_signatures(digest, keys)])
        alloc = _reload(ledger, epoch)
    checkpoint("signed")

    submitter = submitter_key or (deployment.deployer.key if deployment.deployer else None)
    if submitter is None:
        raise ChainError("no key to submit the settlement with (pass one; the deployment has no deployer key)")
    key = as_key(submitter)
    data = rewards.calldata("settle", epoch, root, alloc.total, [_b32(s) for s in alloc.signatures])
    try:
        sent = chain.send(key, rewards.address, data, wait=False, label="Rewards.settle")
    except ContractRevert:
        recovered = _already_settled(ledger, deployment, chain, alloc)  # someone else settled it meanwhile
        if recovered is not None:
            return recovered
        raise
    tx_hash = str(sent)
    checkpoint("sent")
    receipt = chain.wait(tx_hash, sender=address_of(key))
    if receipt.status != 1:
        recovered = _already_settled(ledger, deployment, chain, alloc)
        if recovered is not None:
            return recovered
        raise ChainError(f"Rewards.settle transaction {tx_hash} failed")
    checkpoint("mined")
    ledger.mark_posted(epoch, tx_hash)
    checkpoint("posted")
    return _result(_reload(ledger, epoch), tx_hash, "sent", receipt.gas_used)


def _reload(ledger: Ledger, epoch: int) -> EpochAllocation:
    alloc = ledger.epoch(epoch)
    assert alloc is not None
    return alloc


def _result(alloc: EpochAllocation, tx_hash: str, outcome: str, gas: int | None = None) -> SettlementResult:
    return SettlementResult(alloc.epoch, alloc.root, alloc.total, len(alloc.amounts), tx_hash, outcome, gas)


def _already_settled(ledger: Ledger, deployment: Deployment, chain: Chain, alloc: EpochAllocation) -> SettlementResult | None:
    """If the chain already has this epoch, record it (same root) or refuse (another root)."""
    rewards = deployment.rewards_contract(chain)
    on_chain = rewards.call("epochs", alloc.epoch)
    if on_chain["root"] == ZERO32:
        last = rewards.call("lastSettledEpoch")
        if last >= alloc.epoch:
            raise ChainError(f"epoch {alloc.epoch} can no longer be settled: epoch {last} is already settled "
                             "(settlements must be strictly increasing)")
        return None
    if on_chain["root"] != _b32(alloc.root) or on_chain["total"] != alloc.total:
        raise ChainError(f"epoch {alloc.epoch} is settled on chain with root 0x{on_chain['root'].hex()} total "
                         f"{on_chain['total']}, but the ledger has root {alloc.root} total {alloc.total}")
    events = rewards.past_events("EpochSettled", "0x" + alloc.epoch.to_bytes(32, "big").hex(),
                                 from_block=deployment.deployed_block)
    if not events:
        raise ChainError(f"epoch {alloc.epoch} has a root on chain but no EpochSettled event was found")
    tx_hash = str(events[0]["tx_hash"])
    ledger.mark_posted(alloc.epoch, tx_hash)
    return _result(_reload(ledger, alloc.epoch), tx_hash, "recovered")


def claim(ledger: Ledger, deployment: Deployment, epoch: int, key: str | bytes, *, chain: Chain | None = None) -> tuple[int, TxReceipt]:
    """Claim the allocation of the account of ``key`` in ``epoch`` with its Merkle proof from the ledger."""
    raw = as_key(key)
    address = to_checksum_address(address_of(raw))
    amount, proof = ledger.proof(epoch, address)
    rewards = deployment.rewards_contract(chain)
    receipt = rewards.transact(raw, "claim", epoch, amount, [_b32(p) for p in proof])
    return amount, receipt
