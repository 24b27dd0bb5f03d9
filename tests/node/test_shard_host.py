"""Several shard apps in one process: each on its own port and key; a shard given up drains its sessions
(or waits out the grace period) before it stops listening."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import aiohttp
import pytest

from veriswarm.errors import ConfigError
from veriswarm.manifest import ModelDir
from veriswarm.node.app import STATE
from veriswarm.node.config import NodeConfig
from veriswarm.node.host import ShardHost
from veriswarm.node.shardchoice import shard_key
from veriswarm.receipts import address_of

KEY = bytes.fromhex("11" * 32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _info(http: aiohttp.ClientSession, port: int) -> dict[str, object] | None:
    try:
        async with http.get(f"http://127.0.0.1:{port}/v1/info") as resp:
            return dict(await resp.json())
    except aiohttp.ClientError:
        return None


async def test_hosted_shards_move_and_drain(tiny_dir: Path) -> None:
    ports = {0: _free_port(), 1: _free_port()}
    host = ShardHost(config=NodeConfig(model_dir=tiny_dir), model_dir=ModelDir.open(tiny_dir), node_key=KEY,
                     port_of=ports.__getitem__, report=lambda: {"node": "me"})
    async with aiohttp.ClientSession() as http:
        try:
            await host.serve([0, 1], grace_s=0)
            for s in (0, 1):
                info = await _info(http, ports[s])
                assert info is not None and info["shard_index"] == s
                assert info["address"] == address_of(shard_key(KEY, s))
            async with http.get(f"http://127.0.0.1:{ports[1]}/v1/placement") as resp:
                assert await resp.json() == {"node": "me"}

            # An open session on shard 0 holds it up for the grace period...
            sessions = host.runners[0].app[STATE].sessions
            model = host.runners[0].app[STATE].shard
            sessions.open("s1", model.new_cache(8), b"", owner=1)
            t0 = time.monotonic()
            await host.serve([1], grace_s=0.6)
            assert time.monotonic() - t0 >= 0.6 and host.shards == [1]
            assert await _info(http, ports[0]) is None

            # ... and a session that closes lets it stop early.
            sessions = host.runners[1].app[STATE].sessions
            sessions.open("s2", host.runners[1].app[STATE].shard.new_cache(8), b"", owner=1)
            asyncio.get_running_loop().call_later(0.3, sessions.close, "s2", 1)
            t0 = time.monotonic()
            await host.serve([0], grace_s=30)
            assert time.monotonic() - t0 < 5 and host.shards == [0]
            info = await _info(http, ports[0])
            assert info is not None and info["shard_index"] == 0
        finally:
            await host.close()
    assert host.shards == []


def test_advertised_urls_shift_with_each_shards_port(tiny_dir: Path) -> None:
    """A node serving one port per shard advertises each on its own public port, offset like the local one."""
    cfg = NodeConfig(model_dir=tiny_dir, port=8700, advertise_url="https://node.example.org:9700")
    host = ShardHost(config=cfg, model_dir=ModelDir.open(tiny_dir), node_key=KEY,
                     port_of=lambda s: 8700 + s, report=lambda: {})
    assert [host.config_for(s).url for s in (0, 2)] == ["https://node.example.org:9700", "https://node.example.org:9702"]
    assert host.config_for(2).port == 8702
    # Without a port the scheme's default is the base; an IPv6 host keeps its brackets.
    assert NodeConfig(port=8700, advertise_url="http://203.0.113.5").advertised_at(8703) == "http://203.0.113.5:83"
    # Every shard's URL is built the same way, the first one's too (a trailing slash would double in "/v1/…").
    assert NodeConfig(port=8700, advertise_url="http://203.0.113.5/").advertised_at(8700) == "http://203.0.113.5:80"
    assert NodeConfig(port=8700, advertise_url="https://[2001:db8::1]:9000").advertised_at(8701) == "https://[2001:db8::1]:9001"
    # No advertise_url: the local address, as before.
    assert ShardHost(config=NodeConfig(model_dir=tiny_dir, host="127.0.0.1", port=8700), model_dir=ModelDir.open(tiny_dir),
                     node_key=KEY, port_of=lambda s: 8700 + s, report=lambda: {}).config_for(1).url == "http://127.0.0.1:8701"


@pytest.mark.parametrize("url,why", [
    ("https://node.example.org/veriswarm", "scheme://host"),  # a path cannot be shifted per shard
    ("https://node.example.org:9700?x=1", "scheme://host"),
    ("https://user:pw@node.example.org", "scheme://host"),
    ("ftp://node.example.org", "must be http"),
    ("node.example.org:9700", "must be http"),
    ("https://node.example.org:99999", "invalid port"),
    ("https://node.example.org:65535", "outside 1..65535"),  # shard 1 would be on 65536
])
def test_advertised_urls_that_cannot_be_shifted_are_refused(url: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        NodeConfig(port=8700, advertise_url=url).advertised_at(8701)
