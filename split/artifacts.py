"""Load shards and the client head from a model directory, verifying every artifact hash."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch
from safetensors.torch import load_file
from torch import nn

from veriswarm.errors import ManifestError
from veriswarm.manifest import ModelDir

from .modeling import HeadModel, ShardModel


def load_shard(model_dir: ModelDir, index: int, *, verify: bool = True) -> ShardModel:
    spec = model_dir.manifest.shard(index)
    path = model_dir.artifact_path(spec.artifact, verify=verify)
    sd = load_file(str(path))
    try:
        model = ShardModel(model_dir.manifest.config, spec.layer_start, spec.layer_end, sd)
    except KeyError as exc:
        raise ManifestError(f"shard {index} artifact lacks a tensor: {exc}") from None
    _copy_out_of_file(model, sd)
    return model


def _copy_out_of_file(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    """Give ``model`` its own copy of every tensor still backed by the artifact's memory map.

    safetensors maps the file once and unmaps it only when no tensor from it is left. The stacked
    projections (modeling.StackedRows) are copies, so the rest would keep the whole mapping alive and the
    originals' pages, never read again, counted in the node's memory. With everything copied the mapping
    goes with ``sd``: the node holds each weight once, in its own memory (no longer shared, through the
    page cache, with other processes serving the same shard on one machine)."""
    mapped = {t.untyped_storage().data_ptr() for t in sd.values()}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.untyped_storage().data_ptr() in mapped:
            tensor.data = tensor.data.clone()


def load_head(model_dir: ModelDir, *, verify: bool = True) -> HeadModel:
    path = model_dir.artifact_path(model_dir.manifest.head, verify=verify)
    sd = load_file(str(path))
    try:
        return HeadModel(model_dir.manifest.config, sd)
    except KeyError as exc:
        raise ManifestError(f"head artifact lacks a tensor: {exc}") from None
