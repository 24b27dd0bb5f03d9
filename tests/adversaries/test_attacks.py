"""Misbehaving nodes (real processes) behind an honest first shard: clients accept their well-signed
but wrong outputs; the verifier's re-execution catches every one, and never flags the honest node."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from veriswarm.client import Client
from veriswarm.deploy.local import LocalSwarm
from veriswarm.incentives.ledger import Ledger
from veriswarm.manifest import ModelDir
from veriswarm.sinks import MemorySink
from veriswarm.verifier.core import Verifier, VerifierConfig, VerifierError

EVIL = [sys.executable, "-m", "tests.adversaries.evil_node"]
ATTACKS = {
    "noise_large": ["--mode", "noise", "--scale", "1e-1"],
    "noise_small": ["--mode", "noise", "--scale", "1e-3"],  # ~10x the fp32 tolerance: a subtle cheat
    "wrong_weights": ["--mode", "wrong_weights", "--scale", "1e-2"],
    "skip_layer": ["--mode", "skip_layer"],
    "kv_corrupt": ["--mode", "kv_corrupt", "--after", "8"],
    "replay": ["--mode", "replay"],
}


@pytest.fixture(scope="module", params=sorted(ATTACKS))
def attacked(request: pytest.FixtureRequest, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[str, LocalSwarm]]:
    swarm = LocalSwarm(model_dir=tiny_dir, workdir=tmp_path_factory.mktemp(f"attack-{request.param}"),
                       torch_threads=1, commands={1: [*EVIL, *ATTACKS[request.param]]})
    swarm.start()
    yield request.param, swarm
    swarm.stop()


def test_attack_is_detected_and_honest_node_is_not(attacked: tuple[str, LocalSwarm], tiny_dir: Path,
                                                  tmp_path: Path) -> None:
    name, swarm = attacked
    sink = MemorySink()
    with Client(tiny_dir, swarm.urls, sink=sink) as client:
        client.generate_ids([5, 6, 7, 8, 9, 10, 11, 12], max_new_tokens=16, ignore_eos=True)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.create_schema()
    verifier = Verifier(ModelDir.open(tiny_dir), ledger=ledger, config=VerifierConfig(audit_rate=1.0))
    for record in sink.records:
        verifier.submit(record)
    verdicts = {v.shard_index: v for v in verifier.audit_due(force=True)}
    honest, evil = swarm.nodes[0], swarm.nodes[1]
    assert verdicts[0].passed, f"honest node flagged: {verdicts[0].summary()}"
    assert not verdicts[1].passed, f"{name} not detected: {verdicts[1].summary()}"
    assert ledger.node(evil.address).status == "excluded"
    assert ledger.node(honest.address).status == "active"
    assert [s["node_address"] for s in ledger.slashes()] == [evil.address]
    if name == "kv_corrupt":  # the first steps were honest: the fault is found where the cache went bad
        first = verdicts[1].first_failure
        assert first is not None and first.step > 0


def test_equivocation_is_caught_from_two_receipts(tiny_dir: Path, tmp_path: Path) -> None:
    """A node that signs a different output when the same session context comes again: the verifier sees
    two receipts with one context hash and two output hashes — evidence anyone can take on chain."""
    import asyncio

    from veriswarm.client import AsyncClient

    swarm = LocalSwarm(model_dir=tiny_dir, workdir=tmp_path / "swarm", torch_threads=1,
                       commands={1: [*EVIL, "--mode", "equivocate", "--scale", "1e-2"]})
    with swarm:
        ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
        ledger.create_schema()
        verifier = Verifier(ModelDir.open(tiny_dir), ledger=ledger, config=VerifierConfig(audit_rate=0.0))

        async def twice() -> None:
            sinks = [MemorySink(), MemorySink()]
            async with AsyncClient(tiny_dir, swarm.urls, sink=sinks[0]) as client:
                await client.generate_ids([5, 6, 7], max_new_tokens=3, ignore_eos=True)
                session = sinks[0].records[0].receipt.session_id
                # The same session id and inputs again (a client retrying, or a verifier's probe).
                client.sink = sinks[1]
                await client.generate_ids([5, 6, 7], max_new_tokens=3, ignore_eos=True, session_id=session)
            for rec in sinks[0].records + sinks[1].records:
                try:
                    verifier.submit(rec)
                except VerifierError:
                    pass  # the honest shard's repeated receipts: identical outputs, refused as duplicates

        asyncio.run(twice())
        evil = swarm.nodes[1].address
        assert verifier.equivocations and verifier.equivocations[0][0].node_address == evil
        first, second = verifier.equivocations[0]
        assert first.receipt.context_hash == second.receipt.context_hash
        assert first.receipt.output_hash != second.receipt.output_hash
        assert ledger.slashes()[0]["kind"] == "equivocation" and ledger.node(evil).status == "excluded"


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_detected_faults_are_slashed_on_the_devnet(attack: str, tiny_dir: Path, tmp_path: Path, devnet, chain) -> None:  # type: ignore[no-untyped-def]
    """End to end on a real anvil, for every attack class: nodes register themselves on chain, the
    misbehaving node serves, the verifier's audit finds it, and its quorum verdict slashes and jails it
    there; the honest node is untouched."""
    from tests.deploy.devnet_fixtures import _SHARED
    from veriswarm.client.chain_registry import ChainRegistry
    from veriswarm.deploy.devnet import deployment_path
    from veriswarm.verifier.slashing import ChainSlasher

    dep_file = deployment_path(_SHARED[0][1])
    swarm = LocalSwarm(model_dir=tiny_dir, workdir=tmp_path / "swarm", torch_threads=1,
                       extra_args=["--deployment", str(dep_file)],
                       commands={1: [*EVIL, *ATTACKS[attack], "--deployment", str(dep_file)]})
    with swarm:
        staking = devnet.staking_contract(chain)
        honest, evil = swarm.nodes[0].address, swarm.nodes[1].address
        assert staking.call("isActive", evil) and staking.call("isActive", honest)
        stake_before = int(staking.call("getNode", evil)["stake"])
        sink = MemorySink()
        with Client(tiny_dir, ChainRegistry(devnet.rpc_url, devnet.staking), sink=sink, domain=devnet.domain) as client:
            client.generate_ids([5, 6, 7, 8, 9, 10, 11, 12], max_new_tokens=16, ignore_eos=True)
        ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
        ledger.create_schema()
        slasher = ChainSlasher(devnet, devnet.verifiers[0].key)
        verifier = Verifier(ModelDir.open(tiny_dir), ledger=ledger, domain=devnet.domain,
                            config=VerifierConfig(audit_rate=1.0), slasher=slasher)
        for record in sink.records:
            verifier.submit(record)
        verdicts = {v.shard_index: v for v in verifier.audit_due(force=True)}
        assert verdicts[0].passed and not verdicts[1].passed
        assert verifier.stats.get("slashes_submitted") == 1
        assert staking.call("isJailed", evil) and not staking.call("isActive", evil)
        assert int(staking.call("getNode", evil)["stake"]) < stake_before
        assert staking.call("isActive", honest) and not staking.call("isJailed", honest)
        assert ledger.slashes()[0]["status"] == "submitted"


def test_cheating_only_sometimes_is_caught_by_unpredictable_sampling(tiny_dir: Path, tmp_path: Path) -> None:
    """A node that cheats in half of its sessions, hoping to dodge audits: it cannot know which steps the
    verifier's committed secret selects, so at a partial audit rate it is still caught."""
    swarm = LocalSwarm(model_dir=tiny_dir, workdir=tmp_path / "swarm", torch_threads=1,
                       commands={1: [*EVIL, "--mode", "sometimes", "--fraction", "0.5", "--scale", "1e-2"]})
    with swarm:
        sink = MemorySink()
        with Client(tiny_dir, swarm.urls, sink=sink) as client:
            for i in range(16):
                client.generate_ids([5 + i, 6, 7], max_new_tokens=6, ignore_eos=True)
        ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
        ledger.create_schema()
        verifier = Verifier(ModelDir.open(tiny_dir), ledger=ledger, config=VerifierConfig(audit_rate=0.3))
        for record in sink.records:
            verifier.submit(record)
        verdicts = verifier.audit_due(force=True)
        skipped = verifier.stats["skipped_sessions"]
        assert len(verdicts) + skipped == 32  # 16 sessions x 2 shards, each audited or skipped by the beacon
        assert any(not v.passed for v in verdicts if v.shard_index == 1)
        assert all(v.passed for v in verdicts if v.shard_index == 0)
        assert ledger.node(swarm.nodes[1].address).status == "excluded"
