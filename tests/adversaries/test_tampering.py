"""A client never uses an output whose receipt does not check out."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestServer

from veriswarm.client import AsyncClient
from veriswarm.errors import RemoteError
from veriswarm.sinks import MemorySink

from .tampering import make_tamper_app


@pytest.mark.parametrize("mode,match", [
    ("flip_output", "output_hash"),
    ("rehash", "signed by"),
    ("resign", "signed by"),
    ("replay", r"receipt step is \d+, expected \d+"),
])
async def test_tampered_results_are_rejected(tiny_swarm, tiny_dir, mode: str, match: str) -> None:  # type: ignore[no-untyped-def]
    honest0, honest1 = tiny_swarm.nodes[0].url, tiny_swarm.nodes[1].url
    async with TestServer(make_tamper_app(honest1, mode)) as proxy:
        sink = MemorySink()
        url = str(proxy.make_url("")).rstrip("/")
        async with AsyncClient(tiny_dir, [honest0, url], sink=sink) as client:
            # The only replica of shard 1 lies: it is banned and the generation ends with one clear error.
            with pytest.raises(RemoteError, match=f"no live replica left for shard 1.*{match}"):
                await client.generate_ids([5, 6, 7], max_new_tokens=4)
            assert client.router.stats.bans == 1
        # Nothing tampered reached the sink. A replaying proxy passes its first answers honestly (it has
        # nothing to replay yet): those records are genuine, one per step; the replayed one is not among them.
        mine = [r for r in sink.records if r.node_url == url]
        if mode == "replay":
            assert [r.receipt.step for r in mine] == list(range(len(mine)))
            assert len({r.receipt.output_hash for r in mine}) == len(mine)
        else:
            assert mine == []
