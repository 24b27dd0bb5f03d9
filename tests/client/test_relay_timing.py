"""Routing under relay sees which node is slow: the client times each hop by when that hop's receipt arrives
(every node pushes its receipt right after handing its output on), not by sharing the chain's time out
evenly. Real node processes; the slow node is an honest one behind a proxy that holds its messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from veriswarm.client import AsyncClient
from veriswarm.deploy.local import LocalSwarm

from ..adversaries.faulty_peer import SLOW_S, make_faulty_app

PROMPT = [51, 52, 53, 54]


@pytest.mark.parametrize("slow_shard", [0, 1])
async def test_relayed_hops_are_timed_each(tiny_swarm: LocalSwarm, tiny_dir: Path, slow_shard: int) -> None:
    urls = [next(n.url for n in tiny_swarm.nodes if n.shard == i) for i in (0, 1)]
    async with TestServer(make_faulty_app(urls[slow_shard], "slow")) as proxy:
        slow = str(proxy.make_url("")).rstrip("/")
        route = [slow if i == slow_shard else u for i, u in enumerate(urls)]
        async with AsyncClient(tiny_dir, route) as client:
            gen = await client.generate_ids(PROMPT, max_new_tokens=16, ignore_eos=True)
            assert gen.relayed_steps == 16
            rtt = {url: client.router.peers[url].rtt_s for url in route}
    fast = route[1 - slow_shard]
    # 16 observations into an EMA of weight 0.2: the slow hop's estimate is near SLOW_S plus its compute,
    # the fast hop's near its compute alone (a few ms on the tiny model).
    assert rtt[slow] > SLOW_S * 0.8, rtt
    assert rtt[slow] > rtt[fast] + SLOW_S / 2, rtt
