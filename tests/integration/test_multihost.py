"""Client and nodes on separate emulated hosts (network namespaces) with 25 ms one-way delay per link:
a full generation gives the same greedy text as on loopback, and takes at least the injected latency."""

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
    print(f"multi-host: {result['ms_per_token']:.1f} ms/token over {DELAY_MS} ms links")
    assert result["token_ids"] == reference
    shards = 2
    # Client-mediated: each token crosses every node's link twice (request + answer), 25 ms each way.
    assert result["ms_per_token"] >= 2 * shards * DELAY_MS * 0.95
    assert len(set(result["addresses"].values())) == shards + 1
