"""Start a node process: load and verify the shard, unlock the key, bind, serve until signalled."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import sys
from dataclasses import replace

import torch
from aiohttp import web

from veriswarm.errors import ConfigError
from veriswarm.keys import load_keystore
from veriswarm.manifest import ModelDir
from veriswarm.receipts import address_of
from veriswarm.split.artifacts import load_shard

from .app import make_app
from .config import NodeConfig

log = logging.getLogger("veriswarm.node")
READY_PREFIX = "veriswarm node ready"
PARENT_ENV = "VERISWARM_PARENT_PID"


def with_deployment(config: NodeConfig) -> NodeConfig:
    """With a deployment configured, sign receipts under its chain id and Staking address (EIP-712 domain)."""
    if not config.deployment:
        return config
    from veriswarm.incentives.chain import Deployment

    dep = Deployment.load(config.deployment)
    default = NodeConfig()
    if config.chain_id not in (default.chain_id, dep.chain_id):
        raise ConfigError(f"chain_id {config.chain_id} contradicts the deployment's chain {dep.chain_id}")
    if config.verifying_contract.lower() not in (default.verifying_contract, dep.staking.lower()):
        raise ConfigError(f"verifying_contract {config.verifying_contract} contradicts the deployment's Staking "
                          f"{dep.staking}")
    return replace(config, chain_id=dep.chain_id, verifying_contract=dep.staking.lower())


def register_on_chain(config: NodeConfig, private_key: bytes, manifest_hash: str) -> str:
    """Register (or update) this node in the deployment's Staking contract: endpoint, shard, manifest, stake."""
    from veriswarm.incentives.chain import Deployment, ensure_registered

    dep = Deployment.load(config.deployment)
    return ensure_registered(dep, private_key, endpoint=config.url, shard_index=config.shard,
                             manifest_hash=manifest_hash, stake_wei=config.stake_wei)


def build_app(config: NodeConfig, password: str) -> web.Application:
    config = with_deployment(config)
    model_dir = ModelDir.open(config.model_dir, expect_hash=config.manifest_hash or None)
    model_dir.manifest.shard(config.shard)  # unknown index → one clear error before any loading
    private_key = load_keystore(config.key_file, password)
    if config.torch_threads > 0:
        torch.set_num_threads(config.torch_threads)
    shard = load_shard(model_dir, config.shard)
    return make_app(config=config, manifest=model_dir.manifest, shard=shard, private_key=private_key)


async def _serve(app: web.Application, config: NodeConfig, address: str, manifest_hash: str) -> None:
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {config.port} on {config.host} is already in use") from None
        raise ConfigError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(_watch_parent(stop))
    print(f"{READY_PREFIX}: shard {config.shard} at {config.url} address {address} manifest {manifest_hash}",
          flush=True)
    await stop.wait()
    watcher.cancel()
    log.info("shutting down")
    await runner.cleanup()


async def _watch_parent(stop: asyncio.Event) -> None:
    """Stop when the process that launched us (a local swarm, a test run) is gone, so none is orphaned."""
    raw = os.environ.get(PARENT_ENV)
    if not raw:
        return
    pid = int(raw)
    while not stop.is_set():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            log.warning("parent process %d is gone; shutting down", pid)
            stop.set()
            return
        except PermissionError:
            pass
        await asyncio.sleep(1.0)


def run_node(config: NodeConfig, password: str) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = with_deployment(config)
    app = build_app(config, password)
    from .app import STATE

    state = app[STATE]
    if config.deployment:
        # Before listening: once /health answers, the node is in the on-chain registry.
        print(register_on_chain(config, state.private_key, state.manifest_hash), flush=True)
    asyncio.run(_serve(app, config, address_of(state.private_key), state.manifest_hash))
