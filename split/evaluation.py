"""Perplexity of a (possibly compressed) model, run through the same ShardModel code a node serves."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from veriswarm.manifest import ModelConfig

from .modeling import HeadModel, ShardModel


@torch.inference_mode()
def perplexity(shard: ShardModel, head: HeadModel, windows: torch.Tensor,
               progress: Callable[[int, int], None] | None = None) -> float:
    """exp(mean next-token NLL) over ``windows`` [n, T]; every window is scored on its own."""
    total, count = 0.0, 0
    for i, win in enumerate(windows):
        ids = win[None]
        logits = head.logits(shard(head.embed_tokens(ids)))
        nll = F.cross_entropy(logits[0, :-1].float(), ids[0, 1:], reduction="sum")
        total += float(nll)
        count += ids.shape[1] - 1
        if progress:
            progress(i + 1, len(windows))
    return math.exp(total / count)


def state_dict_perplexity(cfg: ModelConfig, sd: Mapping[str, torch.Tensor], windows: torch.Tensor,
                          head: HeadModel | None = None) -> float:
    """Perplexity of a whole model given as one veriswarm state dict (layers + head tensors)."""
    shard = ShardModel(cfg, 0, cfg.num_hidden_layers, sd)
    return perplexity(shard, head or HeadModel(cfg, sd), windows)
