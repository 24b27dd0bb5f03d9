"""An SVD-compressed split served by real node processes: exact against the same compressed model run
monolithically; a corrupted compressed artifact is refused at `veriswarm node start`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from veriswarm.cli.main import app
from veriswarm.client import Client
from veriswarm.deploy.local import LocalSwarm
from veriswarm.keys import create_keystore
from veriswarm.manifest import ModelDir
from veriswarm.split.modeling import HeadModel, ShardModel

TOL = 1e-4
SVD = "method=best,bytes=0.35,calib-tokens=1024,seq-len=64,val-tokens=512,fisher-tokens=512"
PASSWORD = "pw-for-tests"


@pytest.fixture(scope="module")
def svd_dir(tiny_hf: tuple[Any, Any, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-svd")
    result = CliRunner().invoke(app, ["split", str(tiny_hf[2]), "--shards", "2", "--out", str(out), "--svd", SVD])
    assert result.exit_code == 0, result.output
    assert ModelDir.open(out).manifest.hash in result.output
    return out


def _monolithic(md: ModelDir) -> tuple[ShardModel, HeadModel]:
    m = md.manifest
    sd: dict[str, torch.Tensor] = {}
    for spec in m.shards:
        sd.update(load_file(str(md.artifact_path(spec.artifact))))
    sd.update(load_file(str(md.artifact_path(m.head))))
    return ShardModel(m.config, 0, m.config.num_hidden_layers, sd), HeadModel(m.config, sd)


def test_compressed_split_served_by_nodes_equals_monolithic(svd_dir: Path, tiny_hf: tuple[Any, Any, Path],
                                                            tmp_path: Path) -> None:
    md = ModelDir.open(svd_dir)
    assert all(s.format == "svd-best" for s in md.manifest.shards)
    assert any(e["format"] == "lowrank" for s in md.manifest.shards for e in s.matrices.values())
    shard, head = _monolithic(md)
    ids = tiny_hf[1]("the quick brown fox jumps over the lazy dog").input_ids
    steps = 12
    with LocalSwarm(model_dir=svd_dir, workdir=tmp_path, torch_threads=1) as swarm, \
            Client(svd_dir, swarm.urls) as client:
        assert len(swarm.nodes) == 2
        prefill = client.prefill_logits(ids)
        gen = client.generate_ids(ids, max_new_tokens=steps, return_logits=True, ignore_eos=True)
    # Monolithic greedy decode of the same compressed model, with its own KV cache.
    ref_prefill = head.logits(shard(head.embed_tokens(torch.tensor([ids]))))[0]
    assert (prefill - ref_prefill).abs().max().item() < TOL
    cache = shard.new_cache(len(ids) + steps)
    hidden, tokens, worst = head.embed_tokens(torch.tensor([ids])), [], 0.0
    for i in range(steps):
        logits = head.logits(shard(hidden, cache.length, cache))[0, -1]
        worst = max(worst, (logits - gen.step_logits[i]).abs().max().item())
        tokens.append(int(logits.argmax()))
        hidden = head.embed_tokens(torch.tensor([[tokens[-1]]]))
    assert worst < TOL, f"max-abs logit error {worst}"
    assert gen.token_ids == tokens


def test_corrupted_compressed_artifact_is_refused_at_node_start(svd_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(svd_dir, bad)
    spec = ModelDir.open(bad).manifest.shard(1)
    blob = bad / spec.artifact.path
    data = bytearray(blob.read_bytes())
    data[-3] ^= 0xFF  # flip bits inside the factor data
    blob.write_bytes(bytes(data))
    key = tmp_path / "node.json"
    create_keystore(key, PASSWORD, light=True)
    result = CliRunner().invoke(app, ["node", "start", "--model-dir", str(bad), "--shard", "1", "--key", str(key),
                                      "--port", "1"], env={"VERISWARM_KEY_PASSWORD": PASSWORD})
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "corrupted" in lines[0] and spec.artifact.path in lines[0]
    assert "Traceback" not in result.output


def test_bad_svd_option_is_a_one_line_error(tiny_hf: tuple[Any, Any, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["split", str(tiny_hf[2]), "--shards", "2", "--out", str(tmp_path / "x"),
                                      "--svd", "bytes=1.5"])
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --svd bytes must be in (0, 1]"), result.output
    assert not (tmp_path / "x").exists()
