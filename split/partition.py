"""Cut a model into contiguous layer shards, write content-addressed artifacts and the manifest."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from veriswarm.errors import ConfigError
from veriswarm.manifest import MANIFEST_FILE, Artifact, Manifest, ModelConfig, ShardSpec, file_sha256

from .sources import ModelSource, config_from_hf, load_hf, resolve_source

if TYPE_CHECKING:
    from .svd import CompressedModel

Progress = Callable[[str, int, int], None]


def plan_layers(num_layers: int, num_shards: int) -> list[tuple[int, int]]:
    """Balanced contiguous ranges; earlier shards take the remainder (30/4 → 8, 8, 7, 7)."""
    if not isinstance(num_shards, int) or not 1 <= num_shards <= num_layers:
        raise ConfigError(f"--shards must be between 1 and the model's {num_layers} layers, got {num_shards}")
    base, extra = divmod(num_layers, num_shards)
    ranges, start = [], 0
    for i in range(num_shards):
        end = start + base + (1 if i < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


def _strip_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF names (model.layers.N..., model.embed_tokens..., lm_head...) → veriswarm names."""
    out = {}
    for key, value in sd.items():
        name = key[len("model."):] if key.startswith("model.") else key
        out[name] = value.detach().to(torch.float32).contiguous()
    return out


def write_blob(tensors: dict[str, torch.Tensor], blobs: Path, metadata: dict[str, str]) -> Artifact:
    """Write a safetensors file and store it under blobs/ by its sha256 (content addressing)."""
    blobs.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=blobs, suffix=".tmp")
    os.close(fd)
    try:
        # One metadata key holding canonical JSON: safetensors stores its metadata map in hash order,
        # so several keys would make identical content hash differently from run to run.
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp,
                  metadata={"veriswarm": json.dumps(metadata, sort_keys=True, separators=(",", ":"))})
        digest = file_sha256(Path(tmp))
        final = blobs / f"sha256-{digest}.safetensors"
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return Artifact(path=f"blobs/{final.name}", sha256=digest, bytes=final.stat().st_size)


def layer_tensors(sd: Mapping[str, torch.Tensor], start: int, end: int) -> dict[str, torch.Tensor]:
    keep = {}
    for name, value in sd.items():
        if name.startswith("layers."):
            idx = int(name.split(".")[1])
            if start <= idx < end:
                keep[name] = value
    return keep


def head_tensors(sd: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    head = {"embed_tokens.weight": sd["embed_tokens.weight"], "norm.weight": sd["norm.weight"]}
    if not cfg.tie_word_embeddings:
        head["lm_head.weight"] = sd["lm_head.weight"]
    return head


def write_model_dir(
    *,
    out: Path,
    name: str,
    cfg: ModelConfig,
    state_dict: Mapping[str, torch.Tensor],
    tokenizer: Any,
    num_shards: int,
    source: dict[str, Any],
    progress: Progress | None = None,
    svd: CompressedModel | None = None,
) -> Manifest:
    """Write blobs/, tokenizer/ and manifest.json for a dense split (or an SVD-compressed one); return the manifest."""
    sd = _strip_prefix(state_dict)
    if svd is not None:  # compressed linear weights replace the dense ones; the manifest records the plan
        sd = svd.apply(sd)
        source = {**source, "svd": svd.describe()}
    ranges = plan_layers(cfg.num_hidden_layers, num_shards)
    out.mkdir(parents=True, exist_ok=True)
    blobs = out / "blobs"
    total = num_shards + 2
    report = progress or (lambda what, done, of: None)
    report("head", 0, total)
    head = write_blob(head_tensors(sd, cfg), blobs, {"kind": "head"})
    shards = []
    for i, (start, end) in enumerate(ranges):
        report(f"shard {i} (layers {start}-{end - 1})", i + 1, total)
        meta = {"kind": "shard", "index": str(i), "layers": f"{start}:{end}"}
        if svd is not None:
            meta["format"] = svd.format
        art = write_blob(layer_tensors(sd, start, end), blobs, meta)
        if svd is None:
            shards.append(ShardSpec(index=i, layer_start=start, layer_end=end, artifact=art))
        else:
            shards.append(ShardSpec(index=i, layer_start=start, layer_end=end, artifact=art, format=svd.format,
                                    matrices=svd.matrices(start, end)))
    report("tokenizer", num_shards + 1, total)
    tok_dir = out / "tokenizer"
    if tok_dir.exists():
        shutil.rmtree(tok_dir)
    tokenizer.save_pretrained(tok_dir)
    tok_files = {p.name: file_sha256(p) for p in sorted(tok_dir.iterdir()) if p.is_file()}
    manifest = Manifest(model_name=name, config=cfg, shards=tuple(shards), head=head,
                        tokenizer=tok_files, source=source)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True))
    report("done", total, total)
    return manifest


def split_model(spec: str | os.PathLike[str] | None, num_shards: int, out: Path,
                progress: Progress | None = None, svd: str | None = None) -> Manifest:
    """Load a model from local files and write a dense split of it to ``out`` (SVD-compressed with ``svd``)."""
    from .svd import SvdOptions, compress_model

    options = None if svd is None else SvdOptions.parse(svd)  # a bad --svd fails before loading anything
    source: ModelSource = resolve_source(spec)
    if progress:
        progress("loading model", 0, num_shards + 2)
    model, tokenizer = load_hf(source)
    cfg = config_from_hf(model.config)
    compressed = None
    if options is not None:
        plan_layers(cfg.num_hidden_layers, num_shards)  # a bad --shards fails before the long compression
        compressed = compress_model(cfg, _strip_prefix(model.state_dict()), tokenizer, options, progress)
    return write_model_dir(out=out, name=source.name, cfg=cfg, state_dict=model.state_dict(),
                           tokenizer=tokenizer, num_shards=num_shards, source=source.describe(),
                           progress=progress, svd=compressed)
