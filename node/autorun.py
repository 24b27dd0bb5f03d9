"""``veriswarm node start --shard auto``: one process, one shard app per hosted shard, placed by the swarm.

Measure this machine (speed of a few forward passes, memory), read the swarm, take the range that
most raises its bottleneck, then re-check every ``recheck_s`` (±25% jitter) and move under the hysteresis
of :mod:`.autoplace`. Before a move (other than the first placement) the node waits a random back-off and
decides again on a fresh reading: nodes that lost the same peer see the same hole at about the same time,
and without this they would all jump to it together, leave another hole, and jump back together.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veriswarm.errors import ConfigError, VeriswarmError
from veriswarm.manifest import ModelDir
from veriswarm.placement import NodeCapacity, Range
from veriswarm.receipts import address_of
from veriswarm.split.artifacts import load_shard

from .autoplace import Decision, Peer, Policy, decide
from .config import NodeConfig
from .host import ShardHost
from .measure import capacity_layers, default_budget, measure_speed
from .multiserve import open_node, until_signalled
from .shardchoice import auto_port
from .swarmview import chain_entries, file_entries, read_peers

log = logging.getLogger("veriswarm.node")


@dataclass(frozen=True)
class AutoOptions:
    peers_file: Path | None = None
    memory_budget: int | None = None  # bytes for shard weights; None: available memory minus KV-cache budget
    recheck_s: float = 60.0
    policy: Policy = field(default_factory=Policy)
    drain_s: float = 60.0  # grace period for sessions on a shard being given up

    def __post_init__(self) -> None:
        if self.recheck_s <= 0 or self.drain_s < 0:
            raise ConfigError("--recheck-s must be > 0 and --drain-s >= 0")
        if self.memory_budget is not None and self.memory_budget <= 0:
            raise ConfigError("--memory-budget must be positive")


class AutoPlacer:
    """The re-check loop of one auto node: read the swarm, decide, move."""

    def __init__(self, config: NodeConfig, model_dir: ModelDir, key: bytes, options: AutoOptions) -> None:
        if not config.deployment and options.peers_file is None:
            raise ConfigError("--shard auto needs --deployment (on-chain registry) or --peers FILE to see the swarm")
        self.config, self.model_dir, self.options = config, model_dir, options
        self.manifest = model_dir.manifest
        self.costs = [s.num_layers for s in self.manifest.shards]
        budget = options.memory_budget or default_budget(config.cache_memory_bytes)
        self.capacity = capacity_layers(self.manifest, budget)
        self.node_id = address_of(key)
        self.host = ShardHost(config=config, model_dir=model_dir, node_key=key,
                              port_of=lambda s: auto_port(config.port, s), report=self.report)
        self.speed = 0.0
        self.current: Range | None = None
        self.last_move_at = -math.inf

    def report(self) -> dict[str, Any]:
        span = list(self.current) if self.current else None
        return {"node": self.node_id, "speed": self.speed, "capacity": self.capacity, "range": span,
                "manifest_hash": self.manifest.hash}

    def measure(self) -> None:
        """Time forward passes on the smallest shard, kept loaded in case this node ends up serving it."""
        bench = min(range(len(self.costs)), key=lambda s: self.costs[s])
        model = load_shard(self.model_dir, bench)
        self.speed = measure_speed(model, self.manifest.config.hidden_size)
        self.host.preloaded[bench] = model
        log.info("measured %.0f layer-tokens/s on shard %d; memory for %d layer(s)", self.speed, bench, self.capacity)

    async def peers(self) -> list[Peer]:
        if self.config.deployment:
            entries = await asyncio.get_running_loop().run_in_executor(
                None, chain_entries, self.config.deployment, self.manifest.hash, len(self.costs))
        else:
            assert self.options.peers_file is not None
            entries = file_entries(self.options.peers_file)
        return await read_peers(entries, self_id=self.node_id, manifest_hash=self.manifest.hash,
                                num_shards=len(self.costs), default_speed=self.speed)

    async def decide(self, confirming: bool = False) -> Decision:
        peers = await self.peers()
        me = NodeCapacity(self.node_id, self.speed, self.capacity)
        decision = decide(self.costs, me, self.current, peers, policy=self.options.policy, now=time.monotonic(),
                          last_move_at=self.last_move_at)
        log.info("%s [speed %.0f layer-tok/s, capacity %d layers, %d peer(s)%s]", decision.line(), self.speed,
                 self.capacity, len(peers), "; re-read after back-off" if confirming else "")
        return decision

    async def move(self, target: Range) -> None:
        await self.host.serve(list(range(target[0], target[1] + 1)), self.options.drain_s)
        self.current, self.last_move_at = target, time.monotonic()

    async def step(self) -> None:
        target = _wanted(await self.decide())
        if target is not None and self.current is not None:
            await asyncio.sleep(random.uniform(0, self.options.recheck_s / 2))  # back-off, then confirm
            target = _wanted(await self.decide(confirming=True))
        if target is not None:
            await self.move(target)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.measure)
            await self.step()  # the first placement: errors here (port in use, chain down) end the process
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), self.options.recheck_s * random.uniform(0.75, 1.25))
                except TimeoutError:
                    pass
                if stop.is_set():
                    break
                try:
                    await _unless_stopped(self.step(), stop)
                except VeriswarmError as exc:  # keep serving what we serve; try again next time
                    log.warning("placement re-check failed: %s", exc)
        finally:
            await self.host.close()


async def _unless_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> None:
    """Run ``work`` but give it up when ``stop`` is set: a back-off or a drain must not hold up Ctrl-C."""
    task = asyncio.create_task(work)
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not task.done():
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


def _wanted(decision: Decision) -> Range | None:
    return decision.target if decision.move else None


def run_auto(config: NodeConfig, password: str, options: AutoOptions) -> None:
    config, model_dir, key = open_node(config, password)
    placer = AutoPlacer(config, model_dir, key, options)
    asyncio.run(until_signalled(placer.run))
