"""``veriswarm node start --shard 2-3 / auto``: every misuse is one clear error line."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from veriswarm.cli.main import app

ENV = {"VERISWARM_KEY_PASSWORD": "pw-for-tests"}


def _start(tiny_dir: Path, key: Path, *extra: str) -> Any:
    args = ["node", "start", "--model-dir", str(tiny_dir), "--key", str(key), *extra]
    return CliRunner().invoke(app, args, env=ENV)


def _one_line_error(result: Any, needle: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.output


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "node.json"
    assert CliRunner().invoke(app, ["node", "keys", "create", "--out", str(path)], env=ENV).exit_code == 0
    return path


def test_shard_flag_misuse_is_one_line(tiny_dir: Path, key: Path, tmp_path: Path) -> None:
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps([{"url": "http://127.0.0.1:9"}]))
    _one_line_error(_start(tiny_dir, key, "--shard", "3-2"), "first shard is after its last")
    _one_line_error(_start(tiny_dir, key, "--shard", "two"), "expected an index")
    _one_line_error(_start(tiny_dir, key, "--shard", "0-5"), "the manifest has shards 0..1")
    _one_line_error(_start(tiny_dir, key, "--shard", "1", "--peers", str(peers)), "only apply with --shard auto")
    _one_line_error(_start(tiny_dir, key, "--shard", "auto"), "needs --deployment")
    _one_line_error(_start(tiny_dir, key, "--shard", "auto", "--peers", str(peers), "--memory-budget", "1000"),
                    "memory budget 1000 bytes holds 0 layer(s)")
    _one_line_error(_start(tiny_dir, key, "--shard", "auto", "--peers", str(peers), "--recheck-s", "0"),
                    "--recheck-s must be > 0")
    _one_line_error(_start(tiny_dir, key, "--shard", "auto", "--peers", str(peers), "--move-threshold", "-1"),
                    "--move-threshold")


def test_a_range_whose_port_is_taken_is_one_line(tiny_dir: Path, key: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        _one_line_error(_start(tiny_dir, key, "--shard", "0-1", "--port", str(port)), "already in use")


def test_a_range_with_an_advertise_url_that_cannot_be_shifted_is_one_line(tiny_dir: Path, key: Path) -> None:
    args = ["node", "start", "--model-dir", str(tiny_dir), "--key", str(key), "--shard", "0-1"]
    env = {**ENV, "VERISWARM_NODE_ADVERTISE_URL": "https://node.example.org/veriswarm"}
    _one_line_error(CliRunner().invoke(app, args, env=env), "advertises scheme://host[:port] only")
