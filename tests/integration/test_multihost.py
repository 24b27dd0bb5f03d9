"""Client and nodes on separate emulated hosts (network namespaces) with 25 ms one-way delay per link:
a full generation, over the server-to-server relay and over the client-mediated path, gives the same
greedy text as on loopback, and takes at least the latency injected on the links it crosses."""

from __future__ import annotations

from pathlib import Path

import pytest

from veriswarm.client import Client
from veriswarm.deploy.local import LocalSwarm
from veriswarm.deploy.netlab import available
from veriswarm.deploy.wan import run_wan

DELAY_MS = 25.0
PROMPT = [7, 8, 9, 10, 11]


@pytest.mark.slow
def test_generation_across_namespaces(tiny_dir: Path, tiny_swarm: LocalSwarm, tmp_path: Path) -> None:
    why = available()
    if why:
        print(f"SKIPPED multi-host test: {why}")
        pytest.skip(why)
    with Client(tiny_dir, tiny_swarm.urls) as client:
        reference = client.generate_ids(PROMPT, max_new_tokens=8, ignore_eos=True).token_ids
    result = run_wan(tiny_dir, tmp_path, delay_ms=DELAY_MS, prompt_ids=PROMPT, tokens=8)
    relay, direct = result["relay"], result["client_mediated"]
    print(f"multi-host: relay {relay['ms_per_token']:.1f}, client-mediated {direct['ms_per_token']:.1f} ms/token "
          f"over {DELAY_MS} ms links")
    assert relay["token_ids"] == direct["token_ids"] == reference
    assert relay["relayed_steps"] == 8 and direct["relayed_steps"] == 0
    shards = 2
    # The traffic really crossed the delayed links. Client-mediated: each token crosses every node's link
    # twice (request + answer). Relay: client -> n0 -> n1 -> client, one crossing per link plus the way back.
    assert direct["ms_per_token"] >= 2 * shards * DELAY_MS * 0.95
    assert relay["ms_per_token"] >= (shards + 1) * DELAY_MS * 0.95
    assert len(set(result["addresses"].values())) == shards + 1
