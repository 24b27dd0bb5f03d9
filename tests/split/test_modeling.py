"""The shard code against transformers, for each supported family, on tiny random models."""

from pathlib import Path

import pytest
import torch

from veriswarm.errors import ConfigError
from veriswarm.split.modeling import HeadModel, ShardModel
from veriswarm.split.partition import _strip_prefix, head_tensors, layer_tensors, plan_layers
from veriswarm.split.sources import config_from_hf

from ..tiny import tiny_hf_model

TOL = 1e-4  # max-abs on logits, fp32


def _split(model: torch.nn.Module, shards: int) -> tuple[HeadModel, list[ShardModel]]:
    cfg = config_from_hf(model.config)
    sd = _strip_prefix(model.state_dict())
    parts = [ShardModel(cfg, a, b, layer_tensors(sd, a, b)) for a, b in plan_layers(cfg.num_hidden_layers, shards)]
    return HeadModel(cfg, head_tensors(sd, cfg)), parts


def _run(head: HeadModel, shards: list[ShardModel], ids: torch.Tensor) -> torch.Tensor:
    h = head.embed_tokens(ids)
    for s in shards:
        h = s(h)
    return head.logits(h)


@pytest.mark.parametrize("kind,extra", [
    ("llama", {}),
    ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
    ("qwen2", {}),
    ("mistral", {"sliding_window": 8}),
])
def test_split_prefill_and_cached_decode_match_transformers(kind: str, extra: dict) -> None:
    model = tiny_hf_model(kind, layers=5, **extra)
    head, shards = _split(model, 3)
    ids = torch.randint(0, 320, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits
    assert (_run(head, shards, ids) - ref).abs().max().item() < TOL
    # Decode through KV caches (prefill 12, then 8 single steps) equals recomputing the full prefix.
    caches = [s.new_cache(32) for s in shards]
    h = head.embed_tokens(ids[:, :12])
    for s, c in zip(shards, caches, strict=True):
        h = s(h, 0, c)
    for pos in range(12, 20):
        h = head.embed_tokens(ids[:, pos:pos + 1])
        for s, c in zip(shards, caches, strict=True):
            h = s(h, pos, c)
        assert (head.logits(h)[:, -1] - ref[:, pos]).abs().max().item() < TOL


def test_biases_are_used_when_present() -> None:
    model = tiny_hf_model("qwen2", layers=2)
    head, shards = _split(model, 1)
    assert shards[0].layers[0].self_attn.q_proj.bias is not None
    assert shards[0].layers[0].self_attn.o_proj.bias is None


def test_chunked_prefill_through_cache_matches_one_shot() -> None:
    model = tiny_hf_model("llama", layers=3)
    head, shards = _split(model, 1)
    ids = torch.randint(0, 320, (1, 70), generator=torch.Generator().manual_seed(2))
    one = _run(head, shards, ids)
    cache = shards[0].new_cache(128)  # grows past its first 64-slot allocation
    outs = []
    for a, b in [(0, 30), (30, 31), (31, 70)]:
        outs.append(head.logits(shards[0](head.embed_tokens(ids[:, a:b]), a, cache)))
    assert (torch.cat(outs, 1) - one).abs().max().item() < TOL


def test_cache_positions_must_line_up() -> None:
    model = tiny_hf_model("llama", layers=1)
    _, shards = _split(model, 1)
    cache = shards[0].new_cache(8)
    x = torch.randn(1, 4, 64)
    with pytest.raises(ValueError):
        shards[0](x, 2, cache)  # cache is empty: step must start at 0
    shards[0](x, 0, cache)
    with pytest.raises(ValueError):
        shards[0](torch.randn(1, 5, 64), 4, cache)  # 9 positions > max_length 8
    with pytest.raises(ValueError):
        shards[0](x, 3)  # no cache: must start at 0


def test_plan_layers() -> None:
    assert plan_layers(30, 4) == [(0, 8), (8, 16), (16, 23), (23, 30)]
    assert plan_layers(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert plan_layers(5, 1) == [(0, 5)]
    for bad in (0, 31, -1):
        with pytest.raises(ConfigError):
            plan_layers(30, bad)


def test_unsupported_architectures_are_refused(tmp_path: Path) -> None:
    from transformers import GPT2Config

    with pytest.raises(ConfigError, match="not a supported"):
        config_from_hf(GPT2Config())
