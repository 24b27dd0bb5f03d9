"""Routing by the ledger's verified reputation (issue 6): among replicas of a shard the router weights its
measured latency by reputation, and never routes to a node the ledger excluded. Real node processes, a
real SQLite ledger fed with the receipts of real generations."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from veriswarm.client import AsyncClient
from veriswarm.deploy.local import LocalSwarm
from veriswarm.incentives.ledger import Ledger, ReceiptEntry
from veriswarm.incentives.reputation import LedgerReputation
from veriswarm.sinks import MemorySink

PROMPT = [41, 42, 43, 44]


@pytest.fixture(scope="module")
def replicas(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSwarm]:
    swarm = LocalSwarm(model_dir=tiny_dir, workdir=tmp_path_factory.mktemp("rep"), replicas=2, torch_threads=1)
    swarm.start()
    yield swarm
    swarm.stop()


async def _routes(client: AsyncClient, n: int) -> list[list[str]]:
    routes = []
    for _ in range(n):
        gen = await client.generate_ids(PROMPT, max_new_tokens=3, ignore_eos=True)
        routes.append(gen.route)
    return routes


async def test_the_router_prefers_verified_nodes_and_skips_excluded_ones(replicas: LocalSwarm, tiny_dir: Path,
                                                                        tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.create_schema()
    by_shard = {s: [n for n in replicas.nodes if n.shard == s] for s in (0, 1)}
    # Real receipts from each replica of shard 1, then audits: one replica passes every audit, the other
    # misses them (its reputation sinks toward the floor but stays above it).
    sink = MemorySink()
    for node in by_shard[1]:
        async with AsyncClient(tiny_dir, [by_shard[0][0].url, node.url], sink=sink) as client:
            await client.generate_ids(PROMPT, max_new_tokens=2, ignore_eos=True)
    mine = [r for r in sink.records if r.receipt.shard_index == 1]
    ledger.record_receipts(ReceiptEntry(r.receipt, r.node_address, 1, 0) for r in mine)
    good, poor = by_shard[1]
    address = {r.node_url: r.node_address for r in mine}
    for r in mine:
        ledger.record_outcome(r.receipt.receipt_id(), "v1", "pass" if r.node_url == good.url else "miss")
    assert ledger.reputation(address[good.url]) > 0.5 > ledger.reputation(address[poor.url]) > 0.2

    reputation = LedgerReputation(ledger, ttl_s=0.0)
    async with AsyncClient(tiny_dir, replicas.urls, reputation=reputation) as client:
        await client.router.refresh(client._session())
        # At equal measured latency the verified replica ranks first. (The latencies are set equal: on
        # loopback the measured ones differ by noise as large as this reputation gap.)
        for stats in client.router.peers.values():
            stats.rtt_s = 0.010
        assert [p.url for p in client.router.candidates(1)] == [good.url, poor.url]
        # Reputation weights latency: the poor replica must be more than good/poor times faster to win.
        ratio = reputation(address[good.url]) / reputation(address[poor.url])
        client.router.peers[poor.url].rtt_s = 0.010 / ratio * 1.01
        assert client.router.candidates(1)[0].url == good.url
        client.router.peers[poor.url].rtt_s = 0.010 / ratio * 0.99
        assert client.router.candidates(1)[0].url == poor.url
        # A proven fault excludes the good one: it is never a candidate again, and generations go
        # through the other replica.
        ledger.record_slash(address[good.url], "0x" + "ee" * 32, "verdict", {"test": True})
        assert reputation(address[good.url]) == 0.0
        assert [p.url for p in client.router.candidates(1)] == [poor.url]
        assert all(route[1] == poor.url for route in await _routes(client, 3))
        # And with every replica of a shard excluded there is no route: one clear error naming the shard.
        ledger.record_slash(address[poor.url], "0x" + "ef" * 32, "verdict", {"test": True})
        with pytest.raises(Exception, match=r"shard\(s\) \[1\]"):
            await client.generate_ids(PROMPT, max_new_tokens=2)
    ledger.close()


def test_an_unreadable_ledger_keeps_the_last_snapshot(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    ledger.create_schema()
    ledger.record_slash("0x" + "11" * 20, "0x" + "aa" * 32, "verdict", {})
    reputation = LedgerReputation(ledger, ttl_s=0.0)
    assert reputation("0x" + "11" * 20) == 0.0
    assert reputation("0x" + "22" * 20) == ledger.params.initial_reputation  # unseen: the initial reputation
    ledger.engine.dispose()
    (tmp_path / "l.db").unlink()
    (tmp_path / "l.db").mkdir()  # the path is now a directory: every query fails
    assert reputation("0x" + "11" * 20) == 0.0
