"""Several shard apps in one node process, each on its own port under its own key; added and removed live.

``node/app.py`` serves exactly one shard per application, so a node hosting a range runs one application
per shard. Adding a shard: load it, listen, register it on chain (with a deployment), print its ready
line. Removing one: take it off the on-chain list first (so no new client is sent there), let its open
sessions finish or the grace period run out, then close it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from veriswarm.errors import ConfigError, VeriswarmError
from veriswarm.manifest import ModelDir
from veriswarm.receipts import address_of
from veriswarm.split.artifacts import load_shard
from veriswarm.split.modeling import ShardModel

from .app import STATE, make_app
from .config import NodeConfig
from .serve import READY_PREFIX
from .shardchoice import shard_key
from .swarmview import add_placement_route

log = logging.getLogger("veriswarm.node")


def register_shard(config: NodeConfig, key: bytes, manifest_hash: str) -> str:
    from veriswarm.incentives.chain import Deployment, ensure_registered

    return ensure_registered(Deployment.load(config.deployment), key, endpoint=config.url,
                             shard_index=config.shard, manifest_hash=manifest_hash, stake_wei=config.stake_wei)


def park_shard(deployment: str, key: bytes) -> str:
    """Take this shard's key off every serving list without unbonding it: the contract has no 'unlist', and
    unbonding would lock the key for the unbonding delay, so the record is moved to the zero manifest,
    which no client asks for. The stake stays bonded (and slashable); a later move back re-lists it."""
    from veriswarm.incentives.chain import Deployment

    dep = Deployment.load(deployment)
    dep.staking_contract().transact(key, "updateShard", bytes(32), 0)
    return f"node {address_of(key)} unlisted on chain {dep.chain_id}"


class ShardHost:
    def __init__(self, *, config: NodeConfig, model_dir: ModelDir, node_key: bytes, port_of: Callable[[int], int],
                 report: Callable[[], dict[str, Any]]) -> None:
        self.config = config
        self.model_dir = model_dir
        self.node_key = node_key
        self.port_of = port_of
        self.report = report
        self.runners: dict[int, web.AppRunner] = {}
        self.preloaded: dict[int, ShardModel] = {}  # e.g. the shard the speed was measured on

    @property
    def shards(self) -> list[int]:
        return sorted(self.runners)

    def config_for(self, shard: int) -> NodeConfig:
        port = self.port_of(shard)
        return replace(self.config, shard=shard, port=port, advertise_url=self.config.advertised_at(port))

    async def add(self, shard: int) -> None:
        loop = asyncio.get_running_loop()
        model = self.preloaded.pop(shard, None) or await loop.run_in_executor(None, load_shard, self.model_dir, shard)
        cfg = self.config_for(shard)
        key = shard_key(self.node_key, shard)
        app = make_app(config=cfg, manifest=self.model_dir.manifest, shard=model, private_key=key)
        add_placement_route(app, self.report)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, cfg.host, cfg.port, reuse_address=True).start()
        except OSError as exc:
            await runner.cleanup()
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {cfg.port} on {cfg.host} (shard {shard}) is already in use") from None
            raise ConfigError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror}") from None
        self.runners[shard] = runner
        manifest_hash = self.model_dir.manifest.hash
        if cfg.deployment:
            log.info(await loop.run_in_executor(None, register_shard, cfg, key, manifest_hash))
        print(f"{READY_PREFIX}: shard {shard} at {cfg.url} address {address_of(key)} manifest {manifest_hash}",
              flush=True)

    async def remove(self, shard: int, grace_s: float) -> None:
        runner = self.runners[shard]
        sessions = runner.app[STATE].sessions
        try:
            if self.config.deployment:
                try:
                    log.info(await asyncio.get_running_loop().run_in_executor(
                        None, park_shard, self.config.deployment, shard_key(self.node_key, shard)))
                except VeriswarmError as exc:  # still stop serving: clients skip a listed dead endpoint
                    log.warning("shard %d: could not unlist it on chain: %s", shard, exc)
            deadline = time.monotonic() + grace_s
            while len(sessions) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
        finally:  # also when interrupted mid-drain (shutdown): never leave a shard listening unaccounted for
            del self.runners[shard]
            log.info("shard %d stopped (%d session(s) still open)", shard, len(sessions))
            await runner.cleanup()

    async def serve(self, shards: list[int], grace_s: float) -> None:
        """Serve exactly ``shards``: start the new ones first, then drain and stop the others, so that what
        this node covered stays covered throughout the move."""
        for shard in shards:
            if shard not in self.runners:
                await self.add(shard)
        for shard in self.shards:
            if shard not in shards:
                await self.remove(shard, grace_s)
        self.preloaded.clear()

    async def close(self) -> None:
        for shard in self.shards:
            await self.runners.pop(shard).cleanup()
