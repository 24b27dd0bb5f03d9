"""``veriswarm node start --shard 2-3``: one process serving a fixed range, one shard app per shard; and
the start-up and signal handling it shares with ``--shard auto`` (:mod:`.autorun`)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

import torch

from veriswarm.errors import ConfigError
from veriswarm.keys import load_keystore
from veriswarm.manifest import ModelDir
from veriswarm.placement import Range
from veriswarm.receipts import address_of

from .config import NodeConfig
from .host import ShardHost
from .serve import _watch_parent, with_deployment
from .shardchoice import span_port


def open_node(config: NodeConfig, password: str) -> tuple[NodeConfig, ModelDir, bytes]:
    """Logging, the deployment's signing domain, the verified model directory and the unlocked node key."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = with_deployment(config)
    if config.advertise_url:
        config.advertise_base()  # a base that cannot be shifted per shard fails here, not when a shard is added
    model_dir = ModelDir.open(config.model_dir, expect_hash=config.manifest_hash or None)
    key = load_keystore(config.key_file, password)
    if config.torch_threads > 0:
        torch.set_num_threads(config.torch_threads)
    return config, model_dir, key


async def until_signalled(body: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``body(stop)`` until SIGINT/SIGTERM or the launching process goes away."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(_watch_parent(stop))
    try:
        await body(stop)
    finally:
        watcher.cancel()


def run_span(config: NodeConfig, password: str, span: Range) -> None:
    config, model_dir, key = open_node(config, password)
    num = len(model_dir.manifest.shards)
    if span[1] >= num:
        raise ConfigError(f"--shard {span[0]}-{span[1]}: the manifest has shards 0..{num - 1}")
    host = ShardHost(config=config, model_dir=model_dir, node_key=key, port_of=lambda s: span_port(config.port, span, s),
                     report=lambda: {"node": address_of(key), "speed": None, "range": list(span),
                                     "manifest_hash": model_dir.manifest.hash})

    async def body(stop: asyncio.Event) -> None:
        try:
            await host.serve(list(range(span[0], span[1] + 1)), grace_s=0)
            await stop.wait()
        finally:
            await host.close()

    asyncio.run(until_signalled(body))
