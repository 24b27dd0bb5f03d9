"""The incentive layer end to end on a real anvil: node processes register themselves on chain, a client
finds them in the on-chain registry and generates through them, the checked receipts go to the ledger, are
audited and allocated, the epoch is settled by the verifier quorum, and each node claims its reward with
a Merkle proof. Then a node that signs two different outputs for one input history is slashed by a
bystander and drops out of the registry."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.deploy.devnet_fixtures import chain, deployment_file, devnet
from veriswarm.client import Client
from veriswarm.client.chain_registry import ChainRegistry
from veriswarm.deploy.local import DEVNET_PASSWORD, LocalSwarm, NodeProcess
from veriswarm.errors import RemoteError
from veriswarm.incentives.chain import Chain, ContractRevert, Deployment, slash_equivocation
from veriswarm.incentives.ledger import Ledger, ReceiptEntry
from veriswarm.incentives.mechanism import allocate
from veriswarm.incentives.settlement import claim, settle_epoch
from veriswarm.keys import load_keystore
from veriswarm.manifest import ModelDir
from veriswarm.receipts import hex32
from veriswarm.sinks import MemorySink

__all__ = ["chain", "deployment_file", "devnet"]
ETHER = 10**18


@pytest.fixture(scope="module")
def chain_swarm(tiny_dir: Path, deployment_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSwarm]:
    """One node process per shard of the tiny model, each registering itself on the devnet at start."""
    swarm = LocalSwarm(model_dir=tiny_dir, workdir=tmp_path_factory.mktemp("chain-swarm"), torch_threads=1,
                       extra_args=["--deployment", str(deployment_file)])
    swarm.start()
    yield swarm
    swarm.stop()


def _key(node: NodeProcess) -> bytes:
    return load_keystore(node.key_file, DEVNET_PASSWORD)


def test_register_serve_settle_claim(chain_swarm: LocalSwarm, tiny_dir: Path, devnet: Deployment, chain: Chain,
                                     tmp_path: Path) -> None:
    manifest = ModelDir.open(tiny_dir).manifest
    staking, rewards = devnet.staking_contract(chain), devnet.rewards_contract(chain)
    # registered by themselves at start: endpoint, shard, manifest, the minimum stake
    for node in chain_swarm.nodes:
        rec = staking.call("getNode", node.address)
        assert (rec["endpoint"], rec["shardIndex"], "0x" + rec["manifestHash"].hex()) == (node.url, node.shard, manifest.hash)
        assert rec["stake"] == devnet.params["minStake"] and staking.call("isActive", node.address)
    registry = ChainRegistry(devnet.rpc_url, devnet.staking)
    peers = asyncio.run(registry.peers(manifest.hash))
    assert {(p.url, p.shard_index, p.address) for p in peers} == {(n.url, n.shard, n.address) for n in chain_swarm.nodes}

    sink = MemorySink()
    with Client(tiny_dir, registry, sink=sink, domain=devnet.domain) as client:
        gen = client.generate("the quick brown fox", max_new_tokens=5)
    assert len(gen.token_ids) == 5 and set(gen.route) == set(chain_swarm.urls)
    records = sink.records
    assert len(records) == 2 * 5  # two shards, a prefill step + 4 decode steps each

    # the ledger side: each checked receipt is recorded (signature recovered again here), audited and allocated
    epoch = int(rewards.call("lastSettledEpoch")) + 1
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    entries = []
    for r in records:
        assert r.receipt.signer(devnet.domain) == r.node_address
        assert r.receipt.output_hash == hex32(hashlib.sha256(r.output_frame).digest())
        entries.append(ReceiptEntry(r.receipt, r.node_address, manifest.shard(r.receipt.shard_index).num_layers, epoch))
    assert ledger.record_receipts(entries) == len(entries)
    for e in entries:
        ledger.record_outcome(e.receipt.receipt_id(), devnet.verifiers[0].address, "pass")
    pool = ETHER
    result = settle_epoch(ledger, devnet, epoch, pool, chain=chain)
    assert result.outcome == "sent" and result.nodes == 2
    alloc = ledger.epoch(epoch)
    assert alloc is not None and alloc.status == "posted"
    work: dict[str, int] = {}
    for e in entries:
        work[e.node_address] = work.get(e.node_address, 0) + e.work
    assert alloc.amounts == allocate(pool, work, {n.address: n.reputation for n in ledger.nodes()}, ledger.params)

    for node in chain_swarm.nodes:
        before = chain.balance(node.address)
        amount, receipt = claim(ledger, devnet, epoch, _key(node), chain=chain)
        assert amount == alloc.amounts[node.address] > 0
        assert chain.balance(node.address) == before + amount - receipt.gas_used * chain.gas_price()
    with pytest.raises(ContractRevert) as err:
        claim(ledger, devnet, epoch, _key(chain_swarm.nodes[0]), chain=chain)
    assert err.value.name == "AlreadyClaimed"
    ledger.close()


def test_an_equivocating_node_is_slashed_and_unlisted(chain_swarm: LocalSwarm, tiny_dir: Path, devnet: Deployment,
                                                      chain: Chain) -> None:
    manifest = ModelDir.open(tiny_dir).manifest
    sink = MemorySink()
    registry = ChainRegistry(devnet.rpc_url, devnet.staking)
    with Client(tiny_dir, registry, sink=sink, domain=devnet.domain) as client:
        client.generate("the lazy dog", max_new_tokens=2)
    honest = next(r for r in sink.records if r.receipt.shard_index == 1)
    node = next(n for n in chain_swarm.nodes if n.address == honest.node_address)
    # the node's key signs another output for the same input history (what a cheating node would do)
    forged = replace(honest.receipt, output_hash=hex32(hashlib.sha256(b"another output").digest()),
                     signature="").signed(_key(node), devnet.domain)
    event = slash_equivocation(devnet, devnet.accounts[3].key, honest.receipt, forged, chain=chain)
    assert event["node"] == node.address and event["amount"] == devnet.params["minStake"] // 2
    peers = asyncio.run(registry.peers(manifest.hash))
    assert node.address not in {p.address for p in peers} and len(peers) == 1
    with Client(tiny_dir, registry, domain=devnet.domain) as client, pytest.raises(RemoteError, match="no reachable node"):
        client.generate("the lazy dog", max_new_tokens=1)
