"""Three real node processes started with ``--shard auto`` on a three-shard model find a placement that covers
every shard (a generation works through them); after the sole server of a shard is killed, the survivors (memory
for two shards each) re-cover it and the same generation works again."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from veriswarm.client import AsyncClient
from veriswarm.deploy.local import DEVNET_PASSWORD
from veriswarm.keys import create_keystore, load_keystore
from veriswarm.manifest import ModelDir
from veriswarm.node.measure import bytes_per_layer
from veriswarm.node.shardchoice import shard_key
from veriswarm.receipts import address_of

from ..tiny import save_tiny

SHARDS = 3
PROMPT = [11, 12, 13, 14, 15, 16]
DEADLINE_S = 90.0


@pytest.fixture(scope="module")
def three_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from veriswarm.split.partition import split_model

    hf = tmp_path_factory.mktemp("tiny3-hf")
    save_tiny(hf, layers=3)
    out = tmp_path_factory.mktemp("tiny-3")
    split_model(hf, SHARDS, out)  # one layer per shard
    return out


def _free_block(n: int) -> int:
    """A first port such that the n ports from it are free (each auto node uses base + shard index)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + n >= 65536:
            continue
        socks: list[socket.socket] = []
        try:
            for p in range(base, base + n):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no block of free ports")


class AutoNode:
    """One ``veriswarm node start`` process whose shard s (if it serves it) is on port base + offset(s)."""

    def __init__(self, index: int, base: int, model_dir: Path, work: Path, flags: list[str]) -> None:
        self.index, self.base = index, base
        self.urls = [f"http://127.0.0.1:{base + s}" for s in range(SHARDS)]
        self.key = work / f"node{index}.json"
        create_keystore(self.key, DEVNET_PASSWORD, light=True)
        self.log = work / f"node{index}.log"
        env = {**os.environ, "VERISWARM_KEY_PASSWORD": DEVNET_PASSWORD, "HF_HUB_OFFLINE": "1",
               "PYTHONUNBUFFERED": "1", "VERISWARM_PARENT_PID": str(os.getpid())}
        cmd = [sys.executable, "-m", "veriswarm.cli", "node", "start", "--model-dir", str(model_dir),
               "--key", str(self.key), "--port", str(base), "--torch-threads", "1", *flags]
        with self.log.open("wb") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def serving(self) -> set[int]:
        """Shards this node answers for right now (by asking each of its ports)."""
        out = set()
        for s, url in enumerate(self.urls):
            try:
                with urllib.request.urlopen(f"{url}/v1/info", timeout=0.5) as resp:
                    if json.load(resp)["shard_index"] == s:
                        out.add(s)
            except OSError:
                pass
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def auto_nodes(three_shards: Path, tmp_path: Path) -> Iterator[list[AutoNode]]:
    bases = [_free_block(3 * SHARDS) + SHARDS * i for i in range(3)]
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps([{"url": f"http://127.0.0.1:{b + s}"} for b in bases for s in range(SHARDS)]))
    budget = 2 * bytes_per_layer(ModelDir.open(three_shards).manifest) + 1024  # room for two one-layer shards
    flags = ["--shard", "auto", "--peers", str(peers), "--memory-budget", str(budget), "--recheck-s", "0.5",
             "--cooldown-s", "2", "--drain-s", "1"]
    nodes = [AutoNode(i, b, three_shards, tmp_path, flags) for i, b in enumerate(bases)]
    yield nodes
    for n in nodes:
        n.stop()


def _wait_covered(nodes: list[AutoNode], stable_s: float = 2.0) -> dict[int, set[int]]:
    """Poll until every shard is served and the placement has not changed for ``stable_s``."""
    deadline = time.monotonic() + DEADLINE_S
    last: dict[int, set[int]] | None = None
    since = time.monotonic()
    while time.monotonic() < deadline:
        for n in nodes:
            assert n.proc.poll() is None, f"node {n.index} exited:\n{n.log_text()[-3000:]}"
        now = {n.index: n.serving() for n in nodes}
        if now != last:
            last, since = now, time.monotonic()
        elif set().union(*now.values()) == set(range(SHARDS)) and time.monotonic() - since >= stable_s:
            return now
        time.sleep(0.2)
    logs = "\n".join(n.log_text()[-2000:] for n in nodes)
    raise AssertionError(f"shards not covered within {DEADLINE_S}s: {last}\n{logs}")


async def _generate(model_dir: Path, nodes: list[AutoNode]) -> list[int]:
    urls = [u for n in nodes for u in n.urls]
    async with AsyncClient(model_dir, urls, timeout_s=10) as client:
        gen = await client.generate_ids(PROMPT, max_new_tokens=8, ignore_eos=True)
    assert len(gen.token_ids) == 8
    return list(gen.token_ids)


async def test_auto_nodes_cover_every_shard_and_recover_after_a_kill(auto_nodes: list[AutoNode],
                                                                     three_shards: Path) -> None:
    placement = _wait_covered(auto_nodes)
    first = await _generate(three_shards, auto_nodes)

    # Kill a node that is the only one serving some shard (three nodes of at most two shards each over
    # three shards always leave one such node).
    victim = next(n for n in auto_nodes
                  if any(all(s not in placement[m.index] for m in auto_nodes if m is not n) for s in placement[n.index]))
    victim.stop()
    survivors = [n for n in auto_nodes if n is not victim]
    after = _wait_covered(survivors)
    assert set().union(*after.values()) == set(range(SHARDS))
    assert all(len(shards) <= 2 for shards in after.values())  # within the memory budget
    assert await _generate(three_shards, survivors) == first  # greedy: the same text as before the kill

    logs = "".join(n.log_text() for n in survivors)
    assert "placement: move" in logs and "bottleneck" in logs


async def test_a_range_node_serves_each_shard_on_its_own_port_under_its_own_key(three_shards: Path,
                                                                                tmp_path: Path) -> None:
    base = _free_block(SHARDS)
    node = AutoNode(0, base, three_shards, tmp_path, ["--shard", "0-2"])
    try:
        placement = _wait_covered([node], stable_s=0.0)
        assert placement == {0: {0, 1, 2}}
        await _generate(three_shards, [node])
        node_key = load_keystore(node.key, DEVNET_PASSWORD)
        for s, url in enumerate(node.urls):
            with urllib.request.urlopen(f"{url}/v1/info", timeout=5) as resp:
                assert json.load(resp)["address"] == address_of(shard_key(node_key, s))
    finally:
        node.stop()
