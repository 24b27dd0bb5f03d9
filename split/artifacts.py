"""Load shards and the client head from a model directory, verifying every artifact hash."""

from __future__ import annotations

from safetensors.torch import load_file

from veriswarm.errors import ManifestError
from veriswarm.manifest import ModelDir

from .modeling import HeadModel, ShardModel


def load_shard(model_dir: ModelDir, index: int, *, verify: bool = True) -> ShardModel:
    spec = model_dir.manifest.shard(index)
    path = model_dir.artifact_path(spec.artifact, verify=verify)
    sd = load_file(str(path))
    try:
        return ShardModel(model_dir.manifest.config, spec.layer_start, spec.layer_end, sd)
    except KeyError as exc:
        raise ManifestError(f"shard {index} artifact lacks a tensor: {exc}") from None


def load_head(model_dir: ModelDir, *, verify: bool = True) -> HeadModel:
    path = model_dir.artifact_path(model_dir.manifest.head, verify=verify)
    sd = load_file(str(path))
    try:
        return HeadModel(model_dir.manifest.config, sd)
    except KeyError as exc:
        raise ManifestError(f"head artifact lacks a tensor: {exc}") from None
