import json
from pathlib import Path
from typing import Any

import pytest
import torch

from veriswarm.errors import ConfigError
from veriswarm.manifest import ModelDir
from veriswarm.split.artifacts import load_head, load_shard
from veriswarm.split.partition import split_model
from veriswarm.split.sources import resolve_source


def test_split_writes_shards_head_tokenizer_and_manifest(tiny_hf: tuple[Any, Any, Path], tiny_dir: Path) -> None:
    model, tok, _ = tiny_hf
    md = ModelDir.open(tiny_dir)
    m = md.manifest
    assert [(s.layer_start, s.layer_end) for s in m.shards] == [(0, 2), (2, 4)]
    assert m.config.hidden_size == 64 and m.config.num_key_value_heads == 2
    assert set(m.tokenizer) >= {"tokenizer.json", "tokenizer_config.json"}
    md.tokenizer_dir()  # hashes verified
    ids = torch.tensor([tok("the quick brown fox").input_ids])
    head = load_head(md)
    h = head.embed_tokens(ids)
    for i in range(2):
        h = load_shard(md, i)(h)
    with torch.no_grad():
        ref = model(ids).logits
    assert (head.logits(h) - ref).abs().max().item() < 1e-4


def test_split_is_deterministic(tiny_hf: tuple[Any, Any, Path], tiny_dir: Path, tmp_path: Path) -> None:
    again = split_model(tiny_hf[2], 2, tmp_path / "again")
    assert again.hash == ModelDir.open(tiny_dir).manifest.hash


def test_different_cut_gives_a_different_commitment(tiny_hf: tuple[Any, Any, Path], tiny_dir: Path, tmp_path: Path) -> None:
    four = split_model(tiny_hf[2], 4, tmp_path / "four")
    assert four.hash != ModelDir.open(tiny_dir).manifest.hash
    assert len(four.shards) == 4


def test_bad_sources_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected a .gguf file"):
        resolve_source(tmp_path / "nothing-here")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert resolve_source(tmp_path).kind == "hf"


def test_default_source_is_the_packaged_gguf() -> None:
    src = resolve_source(None)
    assert src.kind == "gguf" and src.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (src.directory / src.gguf_file).is_file()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's memory map (Linux)")
def test_a_loaded_shard_keeps_no_mapping_of_its_artifact(tiny_dir: Path) -> None:
    """The shard's weights are its own (stacked projections are copies; the rest is copied too), so the
    artifact's memory map is gone once loading ends: its pages are not held twice."""
    import gc

    md = ModelDir.open(tiny_dir)
    path = md.artifact_path(md.manifest.shard(1).artifact)
    shard = load_shard(md, 1)
    gc.collect()
    assert str(path) not in Path("/proc/self/maps").read_text()
    attn = shard.layers[0].self_attn
    assert attn.qkv is not None and attn.qkv.usable()  # the copy did not undo the stacking
    out = shard(torch.randn(1, 3, md.manifest.config.hidden_size, generator=torch.Generator().manual_seed(0)))
    assert torch.isfinite(out).all()
