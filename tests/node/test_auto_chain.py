"""The on-chain side of hosting several shards / ``--shard auto``, on a real anvil devnet: per-shard keys
register separately, the swarm's coverage is read back from ``Staking.activeNodes``, and giving a shard up
takes it off the list (and moving back re-lists it)."""

from __future__ import annotations

import os
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.deploy.devnet_fixtures import chain, deployment_file, devnet
from veriswarm.incentives.chain import Chain
from veriswarm.node.autoplace import Peer
from veriswarm.node.config import NodeConfig
from veriswarm.node.host import park_shard, register_shard
from veriswarm.node.shardchoice import shard_key
from veriswarm.node.swarmview import chain_entries, read_peers
from veriswarm.receipts import hex32

__all__ = ["chain", "deployment_file", "devnet"]


def _info_app(manifest_hash: str, shard: int) -> web.Application:
    app = web.Application()

    async def info(_r: web.Request) -> web.Response:
        return web.json_response({"manifest_hash": manifest_hash, "shard_index": shard, "address": "0xLive"})

    app.router.add_get("/v1/info", info)
    return app


async def test_shard_keys_register_park_and_coverage_is_read_from_chain(chain: Chain, deployment_file: Path) -> None:
    manifest = hex32(os.urandom(32))
    node_key = os.urandom(32)
    live = TestServer(_info_app(manifest, 0))
    await live.start_server()
    try:
        live_url = str(live.make_url("")).rstrip("/")
        dead_url = "http://127.0.0.1:9"
        base = NodeConfig(deployment=str(deployment_file))
        for shard, url in ((0, live_url), (2, dead_url)):
            cfg = NodeConfig(deployment=base.deployment, shard=shard, advertise_url=url)
            assert "registered" in register_shard(cfg, shard_key(node_key, shard), manifest)
        entries = chain_entries(str(deployment_file), manifest, 3)
        assert entries == [(live_url, 0), (dead_url, 2)]
        # Coverage counts endpoints that answer: the dead one (still listed) is not coverage.
        peers = await read_peers(entries, self_id="0xMe", manifest_hash=manifest, num_shards=3, default_speed=3.0)
        assert peers == [Peer("0xLive", 3.0, (0, 0))]

        assert "unlisted" in park_shard(str(deployment_file), shard_key(node_key, 2))
        assert chain_entries(str(deployment_file), manifest, 3) == [(live_url, 0)]
        back = NodeConfig(deployment=base.deployment, shard=2, advertise_url=dead_url)
        assert "moved to shard 2" in register_shard(back, shard_key(node_key, 2), manifest)
        assert chain_entries(str(deployment_file), manifest, 3) == [(live_url, 0), (dead_url, 2)]
    finally:
        await live.close()


def _adjacent_free_ports() -> int:
    """A port p with p + 1 free too (an auto node serves shard s on base + s)."""
    import socket

    for _ in range(100):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            base = int(a.getsockname()[1])
            try:
                b.bind(("127.0.0.1", base + 1))
                return base
            except OSError:
                continue
    raise RuntimeError("no two adjacent free ports")


def test_an_auto_node_on_chain_registers_every_shard_it_takes(chain: Chain, tiny_dir: Path, deployment_file: Path,
                                                              tmp_path: Path) -> None:
    """A real ``--shard auto --deployment`` process alone in the swarm, with room for the whole model, takes
    both shards and lists each under its own key (read back the way other auto nodes read the swarm). The
    ``chain`` fixture reverts the registrations afterwards, so other tests of this manifest do not see them."""
    import signal
    import subprocess
    import sys
    import time

    from veriswarm.deploy.local import DEVNET_PASSWORD
    from veriswarm.keys import create_keystore, load_keystore
    from veriswarm.manifest import ModelDir
    from veriswarm.node.measure import bytes_per_layer
    from veriswarm.receipts import address_of

    md = ModelDir.open(tiny_dir)
    key = tmp_path / "node.json"
    create_keystore(key, DEVNET_PASSWORD, light=True)
    base = _adjacent_free_ports()
    budget = 4 * bytes_per_layer(md.manifest) + 1
    cmd = [sys.executable, "-m", "veriswarm.cli", "node", "start", "--shard", "auto", "--model-dir", str(tiny_dir),
           "--key", str(key), "--port", str(base), "--torch-threads", "1", "--deployment", str(deployment_file),
           "--memory-budget", str(budget), "--recheck-s", "0.5"]
    env = {**os.environ, "VERISWARM_KEY_PASSWORD": DEVNET_PASSWORD, "VERISWARM_PARENT_PID": str(os.getpid())}
    log = tmp_path / "node.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    expected = [(f"http://127.0.0.1:{base}", 0), (f"http://127.0.0.1:{base + 1}", 1)]
    try:
        deadline = time.monotonic() + 90
        # Only this node's entries: earlier tests of the suite may have left (dead) registrations for this
        # manifest on the shared devnet; the node ignores them because they do not answer.
        mine = {url for url, _ in expected}
        while [e for e in chain_entries(str(deployment_file), md.manifest.hash, 2) if e[0] in mine] != expected:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        node_key = load_keystore(key, DEVNET_PASSWORD)
        text = log.read_text()
        for shard in (0, 1):
            assert address_of(shard_key(node_key, shard)) in text  # each shard's ready line names its own address
        assert "placement: move none -> 0-1" in text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
