"""Model manifests: the commitment every node, client, verifier and contract checks against.

A manifest lists the model's architecture, the tokenizer files, and every shard artifact by its
sha256 (artifacts are stored content-addressed under ``blobs/``). The manifest hash is the sha256
of the manifest's canonical JSON (sorted keys, no whitespace, UTF-8).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .errors import ManifestError
from .types import ManifestHash

MANIFEST_FORMAT = "veriswarm-manifest/1"
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a Llama-family decoder: what a shard's forward needs, nothing more."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = True
    sliding_window: int | None = None
    hidden_act: str = "silu"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ManifestError(f"model config {name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ManifestError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.hidden_act != "silu":
            raise ManifestError(f"hidden_act {self.hidden_act!r} is not supported (only silu)")

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ManifestError(f"unknown model config fields: {sorted(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ManifestError(f"model config incomplete: {exc}") from None


@dataclass(frozen=True)
class Artifact:
    """A content-addressed file: where it is (relative to the manifest) and its sha256."""

    path: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class ShardSpec:
    index: int
    layer_start: int  # inclusive
    layer_end: int  # exclusive
    artifact: Artifact
    #: "dense" or a compression method name; per-matrix details live in ``matrices``.
    format: str = "dense"
    matrices: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return self.layer_end - self.layer_start


@dataclass(frozen=True)
class Manifest:
    model_name: str
    config: ModelConfig
    shards: tuple[ShardSpec, ...]
    head: Artifact
    tokenizer: dict[str, str]  # tokenizer file name -> sha256 hex (files under tokenizer/)
    wire_dtype: str = "float32"
    source: dict[str, Any] = field(default_factory=dict)
    format: str = MANIFEST_FORMAT

    def __post_init__(self) -> None:
        expected = 0
        for i, shard in enumerate(self.shards):
            if shard.index != i:
                raise ManifestError(f"shard {i} has index {shard.index}; shards must be listed in order")
            if shard.layer_start != expected or shard.layer_end <= shard.layer_start:
                raise ManifestError(f"shard {i} covers layers [{shard.layer_start}, {shard.layer_end}); "
                                    f"expected a non-empty range starting at {expected}")
            expected = shard.layer_end
        if expected != self.config.num_hidden_layers:
            raise ManifestError(f"shards cover {expected} layers but the model has {self.config.num_hidden_layers}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def canonical_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @cached_property
    def hash(self) -> ManifestHash:
        # Cached: the manifest is immutable, and nodes compare against it on every request.
        return ManifestHash("0x" + hashlib.sha256(self.canonical_json()).hexdigest())

    def shard(self, index: int) -> ShardSpec:
        if not isinstance(index, int) or not 0 <= index < len(self.shards):
            raise ManifestError(f"unknown shard index {index}: this manifest has shards 0..{len(self.shards) - 1}")
        return self.shards[index]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"not a {MANIFEST_FORMAT} manifest")
        try:
            shards = tuple(
                ShardSpec(
                    index=s["index"], layer_start=s["layer_start"], layer_end=s["layer_end"],
                    artifact=Artifact(**s["artifact"]), format=s.get("format", "dense"),
                    matrices=s.get("matrices", {}),
                )
                for s in data["shards"]
            )
            return cls(
                model_name=data["model_name"], config=ModelConfig.from_dict(data["config"]), shards=shards,
                head=Artifact(**data["head"]), tokenizer=dict(data["tokenizer"]),
                wire_dtype=data.get("wire_dtype", "float32"), source=dict(data.get("source", {})),
                format=data["format"],
            )
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"manifest is missing or has a malformed field: {exc}") from None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelDir:
    """A directory produced by ``veriswarm split``: manifest.json, blobs/, tokenizer/."""

    root: Path
    manifest: Manifest

    @classmethod
    def open(cls, root: Path | str, *, expect_hash: str | None = None) -> ModelDir:
        root = Path(root)
        path = root / MANIFEST_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ManifestError(f"no {MANIFEST_FILE} in {root} (build one with `veriswarm split`)") from None
        except (OSError, ValueError) as exc:
            raise ManifestError(f"{path} is not valid JSON: {exc}") from None
        manifest = Manifest.from_dict(data)
        if expect_hash is not None and manifest.hash != expect_hash.lower():
            raise ManifestError(f"manifest mismatch: {path} hashes to {manifest.hash}, expected {expect_hash}")
        return cls(root, manifest)

    def artifact_path(self, artifact: Artifact, *, verify: bool = True) -> Path:
        """Resolve an artifact inside this directory, checking its sha256 unless told not to."""
        path = (self.root / artifact.path).resolve()
        if self.root.resolve() not in path.parents:
            raise ManifestError(f"artifact path {artifact.path!r} escapes the model directory")
        if not path.is_file():
            raise ManifestError(f"artifact {artifact.path} is missing from {self.root}")
        if verify:
            actual = file_sha256(path)
            if actual != artifact.sha256:
                raise ManifestError(
                    f"artifact {artifact.path} is corrupted: sha256 {actual[:16]}… does not match the "
                    f"manifest's {artifact.sha256[:16]}…"
                )
        return path

    def tokenizer_dir(self, *, verify: bool = True) -> Path:
        tok = self.root / "tokenizer"
        if verify:
            for name, digest in self.manifest.tokenizer.items():
                p = tok / name
                if not p.is_file() or file_sha256(p) != digest:
                    raise ManifestError(f"tokenizer file {name} is missing or does not match the manifest")
        return tok
