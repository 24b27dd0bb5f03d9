"""The operator's command line: happy paths and one-line errors, through Typer's CliRunner."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from veriswarm.cli.main import app
from veriswarm.deploy.local import LocalSwarm
from veriswarm.manifest import ModelDir

ENV = {"VERISWARM_KEY_PASSWORD": "pw-for-tests"}


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env={**ENV, **(env or {})})


def _one_line_error(result: Any, needle: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.output
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "node.json"
    result = run("node", "keys", "create", "--out", str(path))
    assert result.exit_code == 0 and "node address 0x" in result.output
    return path


def test_keys_create_refuses_to_overwrite(key: Path) -> None:
    _one_line_error(run("node", "keys", "create", "--out", str(key)), "already exists")
    assert run("node", "keys", "create", "--out", str(key), "--force").exit_code == 0


def test_keys_need_a_password(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["node", "keys", "create", "--out", str(tmp_path / "k.json")], env={})
    _one_line_error(result, "VERISWARM_KEY_PASSWORD")


def test_split_command(tiny_hf: tuple[Any, Any, Path], tiny_dir: Path, tmp_path: Path) -> None:
    result = run("split", str(tiny_hf[2]), "--shards", "2", "--out", str(tmp_path / "s"))
    assert result.exit_code == 0, result.output
    assert ModelDir.open(tiny_dir).manifest.hash in result.output
    _one_line_error(run("split", str(tiny_hf[2]), "--shards", "9", "--out", str(tmp_path / "t")), "--shards")
    _one_line_error(run("split", str(tmp_path / "missing"), "--out", str(tmp_path / "u")), "expected a .gguf")


def _start(tiny_dir: Path, key: Path, *extra: str, env: dict[str, str] | None = None) -> Any:
    return run("node", "start", "--model-dir", str(tiny_dir), "--key", str(key), *extra, env=env)


def test_node_start_errors_are_one_line(tiny_dir: Path, key: Path, tmp_path: Path) -> None:
    _one_line_error(_start(tiny_dir, tmp_path / "nokey.json", "--shard", "0"), "not found")
    _one_line_error(_start(tiny_dir, key, "--shard", "7"), "unknown shard index 7")
    _one_line_error(_start(tmp_path, key, "--shard", "0"), "no manifest.json")
    _one_line_error(_start(tiny_dir, key, "--shard", "0", "--manifest-hash", "0x" + "00" * 32), "manifest mismatch")
    _one_line_error(_start(tiny_dir, key, "--shard", "0", env={"VERISWARM_KEY_PASSWORD": "wrong"}), "wrong password")
    _one_line_error(_start(tiny_dir, key, "--shard", "0", env={"VERISWARM_NODE_PORT": "notaport"}), "not a valid int")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        _one_line_error(_start(tiny_dir, key, "--shard", "0", "--port", str(port)), "already in use")


def test_config_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    from veriswarm.node.config import NodeConfig

    cfg_file = tmp_path / "node.toml"
    cfg_file.write_text('[node]\nport = 9001\nshard = 2\nmax_sessions = 5\n')
    cfg = NodeConfig.resolve(config_file=cfg_file, env={"VERISWARM_NODE_PORT": "9002", "VERISWARM_NODE_SHARD": "1"},
                             shard=3)
    assert (cfg.port, cfg.shard, cfg.max_sessions) == (9002, 3, 5)


def test_thread_settings_come_from_env_and_flags_and_refuse_negatives() -> None:
    from veriswarm.errors import ConfigError
    from veriswarm.node.config import NodeConfig

    cfg = NodeConfig.resolve(env={"VERISWARM_NODE_PREFILL_THREADS": "4"}, torch_threads=1)
    assert (cfg.torch_threads, cfg.prefill_threads) == (1, 4)
    with pytest.raises(ConfigError, match="prefill_threads"):
        NodeConfig.resolve(env={}, prefill_threads=-1)


def test_generate_streams_through_the_swarm(tiny_swarm: LocalSwarm, tiny_dir: Path) -> None:
    result = run("generate", "the quick fox", "--model-dir", str(tiny_dir), "--peers", ",".join(tiny_swarm.urls),
                 "--max-new-tokens", "6", "--raw")
    assert result.exit_code == 0, result.output
    assert result.output.strip()


def test_generate_errors(tiny_dir: Path, tmp_path: Path) -> None:
    _one_line_error(run("generate", "hi", "--model-dir", str(tiny_dir)), "--peers")
    _one_line_error(run("generate", "hi", "--model-dir", str(tiny_dir), "--peers", "http://127.0.0.1:9"),
                    "no reachable node serves shard")
    _one_line_error(run("generate", "hi", "--model-dir", str(tiny_dir), "--peers-file", str(tmp_path / "p.json")),
                    "not found")


def test_devnet_up_answers_a_prompt_and_stops(tiny_dir: Path, tmp_path: Path) -> None:
    result = run("devnet", "up", "--model-dir", str(tiny_dir), "--base-port", "0", "--prompt", "the fox",
                 "--exit-after-prompt", env={"VERISWARM_HOME": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert "hop receipts checked" in result.output and "stopping nodes" in result.output
    # Two shards, one node each: each node signed receipts, and the counts add up to the total checked.
    import re

    per_node = re.findall(r"^  (0x[0-9a-fA-F]{40}): (\d+) receipts$", result.output, re.M)
    total = int(re.search(r"^(\d+) hop receipts checked", result.output, re.M).group(1))  # type: ignore[union-attr]
    assert len({a for a, _ in per_node}) == 2 and sum(int(n) for _, n in per_node) == total > 0


def test_swarm_plan(tiny_dir: Path, tmp_path: Path) -> None:
    import json

    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps([{"name": "fast", "speed": 400, "capacity": 4}, {"name": "slow", "speed": 100,
                                                                                   "capacity": 2}]))
    result = run("swarm", "plan", str(nodes), "--model-dir", str(tiny_dir))
    assert result.exit_code == 0, result.output
    assert "bottleneck:" in result.output and "fast" in result.output
    nodes.write_text("[{}]")
    _one_line_error(run("swarm", "plan", str(nodes), "--model-dir", str(tiny_dir)), "expected a list")
