"""Start a node process: load and verify the shard, unlock the key, bind, serve until signalled."""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import sys

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


def build_app(config: NodeConfig, password: str) -> web.Application:
    model_dir = ModelDir.open(config.model_dir)
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
    print(f"{READY_PREFIX}: shard {config.shard} at {config.url} address {address} manifest {manifest_hash}",
          flush=True)
    await stop.wait()
    log.info("shutting down")
    await runner.cleanup()


def run_node(config: NodeConfig, password: str) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = build_app(config, password)
    from .app import STATE

    state = app[STATE]
    asyncio.run(_serve(app, config, address_of(state.private_key), state.manifest_hash))
