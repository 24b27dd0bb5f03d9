"""The settlement job on a real anvil: allocate → quorum-sign → settle → claim, idempotent, and crash-safe
under a real SIGKILL at every stage boundary."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.devnet_fixtures import chain, deployment_file, devnet
from veriswarm.incentives.chain import Chain, ContractRevert, Deployment, quorum_signatures, settlement_digest
from veriswarm.incentives.errors import ChainError, LedgerError
from veriswarm.incentives.ledger import Ledger, ReceiptEntry
from veriswarm.incentives.mechanism import allocate
from veriswarm.incentives.settlement import PAUSE_ENV, STAGES, claim, settle_epoch
from veriswarm.receipts import Receipt, address_of, hex32

__all__ = ["chain", "deployment_file", "devnet"]
ETHER = 10**18
POOL = 3 * ETHER
REPO = Path(__file__).resolve().parents[2]


def _receipt(key: bytes, devnet: Deployment, tokens: int) -> Receipt:
    return Receipt(manifest_hash="0x" + "11" * 32, shard_index=0, session_id=hex32(os.urandom(32)), step=0,
                   start_pos=0, num_tokens=tokens, input_hash=hex32(os.urandom(32)), context_hash=hex32(os.urandom(32)),
                   output_hash=hex32(os.urandom(32)), request_nonce=hex32(os.urandom(32)),
                   timestamp_ms=1).signed(key, devnet.domain)


@pytest.fixture
def nodes(devnet: Deployment, chain: Chain) -> list[bytes]:
    keys = [os.urandom(32) for _ in range(3)]
    for k in keys:  # gas money to claim with
        assert devnet.faucet is not None
        chain.transfer(devnet.faucet.key, address_of(k), ETHER // 10)
    return keys


def _ledger(path: Path, devnet: Deployment, keys: list[bytes]) -> Ledger:
    """Epoch 1: node i served (i + 1) × 4 tokens over 2 receipts on an 8-layer shard; every receipt audited "pass"
    except node 2's second, which is a miss (lower reputation)."""
    ledger = Ledger(f"sqlite:///{path}")
    ledger.migrate()
    entries = [ReceiptEntry(_receipt(k, devnet, (i + 1) * 2), address_of(k), num_layers=8, epoch=1)
               for i, k in enumerate(keys) for _ in range(2)]
    assert ledger.record_receipts(entries) == 6
    for n, e in enumerate(entries):
        ledger.record_outcome(e.receipt.receipt_id(), devnet.verifiers[0].address, "miss" if n == 5 else "pass")
    return ledger


def test_settle_then_claim_pays_each_node_its_allocation(devnet: Deployment, chain: Chain, nodes: list[bytes],
                                                        tmp_path: Path) -> None:
    ledger = _ledger(tmp_path / "l.db", devnet, nodes)
    rewards = devnet.rewards_contract(chain)
    reserved = rewards.call("reserved")
    result = settle_epoch(ledger, devnet, 1, POOL, chain=chain)
    alloc = ledger.epoch(1)
    assert alloc is not None and alloc.status == "posted" and alloc.tx_hash == result.tx_hash
    assert result.outcome == "sent" and result.nodes == 3 and result.total == POOL
    assert rewards.call("epochs", 1)["root"].hex() == alloc.root[2:]
    assert rewards.call("reserved") == reserved + POOL
    # the amounts are work × reputation^γ, exactly (independent recomputation from the ledger's inputs)
    work = {address_of(k): (i + 1) * 2 * 8 * 2 for i, k in enumerate(nodes)}
    reputation = {n.address: n.reputation for n in ledger.nodes()}
    assert alloc.amounts == allocate(POOL, work, reputation, ledger.params)
    for k in nodes:
        address = address_of(k)
        before = chain.balance(address)
        amount, receipt = claim(ledger, devnet, 1, k, chain=chain)
        assert amount == alloc.amounts[address] > 0
        assert chain.balance(address) == before + amount - receipt.gas_used * chain.gas_price()
        assert rewards.events(receipt, "Claimed")[0]["amount"] == amount
    assert rewards.call("epochs", 1)["claimed"] == POOL and rewards.call("reserved") == reserved
    with pytest.raises(ContractRevert) as err:
        claim(ledger, devnet, 1, nodes[0], chain=chain)
    assert err.value.name == "AlreadyClaimed"
    # running the job again changes nothing
    again = settle_epoch(ledger, devnet, 1, POOL, chain=chain)
    assert (again.outcome, again.tx_hash) == ("recorded", result.tx_hash)
    assert len(rewards.past_events("EpochSettled", from_block=devnet.deployed_block)) == 1


def test_a_claim_with_someone_elses_amount_is_refused(devnet: Deployment, chain: Chain, nodes: list[bytes],
                                                      tmp_path: Path) -> None:
    ledger = _ledger(tmp_path / "l.db", devnet, nodes)
    settle_epoch(ledger, devnet, 1, POOL, chain=chain)
    amount, proof = ledger.proof(1, address_of(nodes[2]))
    with pytest.raises(ContractRevert, match="InvalidProof"):
        devnet.rewards_contract(chain).transact(nodes[0], "claim", 1, amount, [bytes.fromhex(p[2:]) for p in proof])


def test_the_job_refuses_what_it_must_not_do(devnet: Deployment, chain: Chain, nodes: list[bytes], tmp_path: Path) -> None:
    ledger = _ledger(tmp_path / "l.db", devnet, nodes)
    with pytest.raises(LedgerError, match="payout delay"):
        settle_epoch(ledger, devnet, 1, POOL, chain=chain, current_epoch=1)
    with pytest.raises(LedgerError, match="not allocated yet"):
        settle_epoch(ledger, devnet, 1, chain=chain)
    with pytest.raises(ContractRevert, match="InsufficientPool"):
        settle_epoch(ledger, devnet, 1, 10**9 * ETHER, chain=chain)
    with pytest.raises(LedgerError, match="already allocated with pool"):
        settle_epoch(ledger, devnet, 1, POOL, chain=chain)
    # another root for epoch 2 already on chain (posted by someone else): the job refuses to record it as its own
    ledger2 = _ledger(tmp_path / "l2.db", devnet, nodes)
    alloc = ledger2.allocate_epoch(1, POOL)
    assert alloc.amounts
    other_root = os.urandom(32)
    digest = settlement_digest(devnet.chain_id, devnet.rewards, 1, other_root, ETHER)
    devnet.rewards_contract(chain).transact(devnet.deployer.key, "settle", 1, other_root, ETHER,
                                            quorum_signatures(digest, [v.key for v in devnet.verifiers]))
    with pytest.raises(ChainError, match="settled on chain with root"):
        settle_epoch(ledger2, devnet, 1, chain=chain)
    assert ledger2.epoch(1).status == "allocated"


def _run_settle(deployment_file: Path, db: Path, pause_at: str | None) -> subprocess.Popen[str]:
    env = {**os.environ, "VERISWARM_HOME": str(db.parent)}
    env.pop(PAUSE_ENV, None)
    if pause_at:
        env[PAUSE_ENV] = pause_at
    return subprocess.Popen([sys.executable, "-m", "veriswarm.cli", "ledger", "settle", "--epoch", "1", "--pool-wei",
                             str(POOL), "--db", f"sqlite:///{db}", "--deployment", str(deployment_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)


@pytest.mark.parametrize("stage", STAGES)
def test_killed_at_any_stage_and_rerun_it_settles_exactly_once(stage: str, devnet: Deployment, chain: Chain,
                                                               deployment_file: Path, nodes: list[bytes],
                                                               tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    _ledger(db, devnet, nodes).close()
    proc = _run_settle(deployment_file, db, stage)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == f"settlement paused at {stage}", line + proc.stdout.read()
    os.kill(proc.pid, signal.SIGKILL)  # no clean-up of any kind
    proc.wait()
    rerun = _run_settle(deployment_file, db, None)
    out, _ = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, out
    expected = "recorded" if stage == "posted" else "recovered" if stage in ("sent", "mined") else "sent"
    assert f"epoch 1 settled ({expected})" in out, out
    rewards = devnet.rewards_contract(chain)
    settled = rewards.past_events("EpochSettled", from_block=devnet.deployed_block)
    assert len(settled) == 1 and settled[0]["epoch"] == 1
    ledger = Ledger(f"sqlite:///{db}")
    alloc = ledger.epoch(1)
    assert alloc is not None and alloc.status == "posted" and alloc.tx_hash == settled[0]["tx_hash"]
    assert "0x" + settled[0]["root"].hex() == alloc.root and alloc.total == POOL
    # nothing lost: every node that served is paid, the whole pool is allocated, and a claim goes through
    assert set(alloc.amounts) == {address_of(k) for k in nodes} and sum(alloc.amounts.values()) == POOL
    amount, _ = claim(ledger, devnet, 1, nodes[1], chain=chain)
    assert amount == alloc.amounts[address_of(nodes[1])]
    ledger.close()
