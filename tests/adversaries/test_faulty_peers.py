"""Issue 6's faulty peers: a replica that answers garbage, stalls forever, drops the connection mid-frame, or
lies about its load. The client detects each, bans it (visible in its router's events and the log), and
completes the generation on the other replica with the text an honest chain gives."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from veriswarm.client import AsyncClient
from veriswarm.deploy.local import LocalSwarm

from .faulty_peer import make_faulty_app

PROMPT = [31, 32, 33, 34, 35]
TOKENS = 8


@pytest.fixture(scope="module")
def two_replicas(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSwarm]:
    swarm = LocalSwarm(model_dir=tiny_dir, workdir=tmp_path_factory.mktemp("faulty"), replicas=2, torch_threads=1)
    swarm.start()
    yield swarm
    swarm.stop()


@pytest.mark.parametrize("relay", [True, False], ids=["relay", "client-mediated"])
@pytest.mark.parametrize("mode", ["garbage", "stall", "close_midframe", "lie_load"])
async def test_a_faulty_replica_is_banned_and_the_generation_completes(
        two_replicas: LocalSwarm, tiny_dir: Path, mode: str, relay: bool, caplog: pytest.LogCaptureFixture) -> None:
    shard0 = next(n for n in two_replicas.nodes if n.shard == 0)
    honest1, behind_proxy = [n for n in two_replicas.nodes if n.shard == 1]
    async with AsyncClient(tiny_dir, [shard0.url, honest1.url], relay=relay) as client:
        reference = await client.generate_ids(PROMPT, max_new_tokens=TOKENS, ignore_eos=True)
    async with TestServer(make_faulty_app(behind_proxy.url, mode)) as proxy:
        faulty = str(proxy.make_url("")).rstrip("/")
        async with AsyncClient(tiny_dir, [shard0.url, faulty, honest1.url], relay=relay, timeout_s=2) as client:
            await client.router.refresh(client._session())
            faulty_address = client.router.peers[faulty].peer.address
            # Make the faulty replica the router's first choice, so that every fault is actually met.
            client.router.reputation = lambda address: 100.0 if address == faulty_address else 1.0
            gen = await client.generate_ids(PROMPT, max_new_tokens=TOKENS, ignore_eos=True)
            assert gen.token_ids == reference.token_ids
            assert gen.route[1] == honest1.url
            assert client.router.stats.bans == 1
            assert client.router.stats.events[0].startswith(f"banned {faulty} (shard 1)")
            assert client.router._banned(faulty)
    assert any(f"banned {faulty}" in r.getMessage() for r in caplog.records)
