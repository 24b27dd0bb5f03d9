import json
from pathlib import Path

import pytest

from veriswarm.errors import ManifestError
from veriswarm.manifest import Manifest, ModelDir


def test_manifest_hash_is_canonical_and_stable(tiny_dir: Path) -> None:
    md = ModelDir.open(tiny_dir)
    again = Manifest.from_dict(json.loads((tiny_dir / "manifest.json").read_text()))
    assert again.hash == md.manifest.hash and md.manifest.hash.startswith("0x") and len(md.manifest.hash) == 66
    assert ModelDir.open(tiny_dir, expect_hash=md.manifest.hash).manifest == md.manifest
    with pytest.raises(ManifestError, match="mismatch"):
        ModelDir.open(tiny_dir, expect_hash="0x" + "00" * 32)


def test_artifacts_are_content_addressed_and_verified(tiny_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(tiny_dir, copy)
    md = ModelDir.open(copy)
    for spec in md.manifest.shards:
        assert spec.artifact.path == f"blobs/sha256-{spec.artifact.sha256}.safetensors"
        md.artifact_path(spec.artifact)
    victim = copy / md.manifest.shards[1].artifact.path
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="corrupted"):
        md.artifact_path(md.manifest.shards[1].artifact)


def test_manifest_structure_is_validated(tiny_dir: Path) -> None:
    data = json.loads((tiny_dir / "manifest.json").read_text())
    broken = json.loads(json.dumps(data))
    broken["shards"][1]["layer_start"] += 1
    with pytest.raises(ManifestError):
        Manifest.from_dict(broken)
    broken = json.loads(json.dumps(data))
    broken["format"] = "other"
    with pytest.raises(ManifestError):
        Manifest.from_dict(broken)
    broken = json.loads(json.dumps(data))
    del broken["head"]
    with pytest.raises(ManifestError):
        Manifest.from_dict(broken)
    with pytest.raises(ManifestError, match="unknown shard"):
        Manifest.from_dict(data).shard(5)


def test_changing_anything_changes_the_hash(tiny_dir: Path) -> None:
    data = json.loads((tiny_dir / "manifest.json").read_text())
    h = Manifest.from_dict(data).hash
    data["shards"][0]["artifact"]["sha256"] = "0" * 64
    assert Manifest.from_dict(data).hash != h
