"""What this machine can offer the swarm: forward speed (layer-tokens/s) and room for layers in memory."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from veriswarm.errors import ConfigError
from veriswarm.manifest import Manifest
from veriswarm.split.modeling import ShardModel


def measure_speed(shard: ShardModel, hidden_size: int, *, tokens: int = 16, repeats: int = 3,
                  min_seconds: float = 0.25, max_repeats: int = 1000) -> float:
    """Layer-tokens per second of timed forward passes on a dummy input, after one warm-up pass (which pays
    for lazy allocations that would otherwise be billed to the first timed pass). At least ``repeats``
    passes and ``min_seconds``: a single pass of a small shard takes well under a millisecond, and so few
    samples would make the figure mostly scheduler noise."""
    x = torch.randn(1, tokens, hidden_size, generator=torch.Generator().manual_seed(0))
    shard.forward(x)
    done = 0
    t0 = time.perf_counter()
    while done < repeats or (time.perf_counter() - t0 < min_seconds and done < max_repeats):
        shard.forward(x)
        done += 1
    elapsed = max(time.perf_counter() - t0, 1e-9)
    return shard.num_layers * tokens * done / elapsed


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int:
    """Bytes the kernel says can be allocated without swapping (MemAvailable), else free physical pages."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def bytes_per_layer(manifest: Manifest) -> int:
    """Weight bytes of the heaviest layer (shards of one split may differ, e.g. SVD-compressed ones)."""
    return max(-(-s.artifact.bytes // s.num_layers) for s in manifest.shards)


def capacity_layers(manifest: Manifest, budget_bytes: int) -> int:
    """Layers whose weights fit in ``budget_bytes``; one clear error if not even the smallest shard does."""
    layers = budget_bytes // bytes_per_layer(manifest)
    smallest = min(s.num_layers for s in manifest.shards)
    if layers < smallest:
        raise ConfigError(f"memory budget {budget_bytes} bytes holds {layers} layer(s) of this model; its smallest "
                          f"shard has {smallest} (raise --memory-budget or free memory)")
    return int(layers)


def default_budget(cache_memory_bytes: int) -> int:
    """Memory for shard weights when none is given: what is available minus what KV caches may reserve."""
    return max(0, available_memory() - cache_memory_bytes)
