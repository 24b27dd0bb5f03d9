from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from veriswarm.deploy.local import LocalSwarm
from veriswarm.split.partition import split_model, write_model_dir

from .tiny import save_tiny


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    """A tiny random Llama saved as an HF directory: (model, tokenizer, directory)."""
    path = tmp_path_factory.mktemp("tiny-hf")
    model, tok = save_tiny(path)
    return model, tok, path


@pytest.fixture(scope="session")
def tiny_dir(tiny_hf: tuple[Any, Any, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model split in 2 shards (4 layers → 2 + 2)."""
    out = tmp_path_factory.mktemp("tiny-split")
    split_model(tiny_hf[2], 2, out)
    return out


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    """The real SmolLM2-135M-Instruct (fp32, dequantized from the packaged GGUF) and its 4-shard split."""
    from veriswarm.split.sources import config_from_hf, load_hf, resolve_source

    source = resolve_source(None)
    model, tok = load_hf(source)
    out = tmp_path_factory.mktemp("smollm2-4")
    write_model_dir(out=out, name=source.name, cfg=config_from_hf(model.config), state_dict=model.state_dict(),
                    tokenizer=tok, num_shards=4, source=source.describe())
    return model, tok, out


@pytest.fixture(scope="session")
def tiny_swarm(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSwarm]:
    """Two node processes (one per shard of the tiny model) on loopback, shared by the session."""
    swarm = LocalSwarm(model_dir=tiny_dir, workdir=tmp_path_factory.mktemp("tiny-swarm"), torch_threads=1)
    swarm.start()
    yield swarm
    swarm.stop()
