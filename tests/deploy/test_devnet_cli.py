"""`veriswarm devnet up/status/down` and `veriswarm ledger` through Typer's CliRunner: the happy path, and one
clear line (never a traceback) when started twice, on a port in use, with a dead chain, or without anvil."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from veriswarm.cli.main import app
from veriswarm.deploy.devnet import free_port, stop_devnet
from veriswarm.incentives.chain import Chain, Deployment
from veriswarm.receipts import address_of


def run(home: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env={"VERISWARM_HOME": str(home), **(env or {})})


def one_line_error(result: Any, needle: str) -> str:
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.output
    assert "Traceback" not in result.output
    return str(lines[0])


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    stop_devnet(tmp_path / "devnet")  # never leave an anvil behind, whatever the test did


def test_up_status_down(home: Path) -> None:
    port = free_port()
    up = run(home, "devnet", "up", "--chain-only", "--chain-port", str(port))
    assert up.exit_code == 0, up.output
    path = home / "devnet" / "deployment.json"
    assert f"deployment file {path}" in up.output
    dep = Deployment.load(path)
    assert dep.rpc_url == f"http://127.0.0.1:{port}" and len(dep.verifiers) == 3 and dep.faucet is not None
    assert dep.chain().code(dep.staking) and dep.chain().code(dep.rewards)
    assert Path(dep.abi_paths["Staking"]).is_file()
    status = run(home, "devnet", "status")
    assert status.exit_code == 0 and "verifiers active: 3" in status.output and "100 ETH" in status.output
    one_line_error(run(home, "devnet", "up", "--chain-only", "--chain-port", str(free_port())),
                   "a devnet is already running")
    down = run(home, "devnet", "down")
    assert down.exit_code == 0 and f"devnet stopped (anvil pid {dep.process['pid']})" in down.output
    assert not path.exists() and not Path(dep.process["home"]).exists()
    assert "no devnet is running" in run(home, "devnet", "down").output
    one_line_error(run(home, "devnet", "status"), "no devnet is running")


def test_port_in_use(home: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        one_line_error(run(home, "devnet", "up", "--chain-only", "--chain-port", str(port)), f"port {port} on 127.0.0.1 is already in use")


def test_a_dead_chain_is_reported_in_one_line_and_cleaned_up(home: Path) -> None:
    assert run(home, "devnet", "up", "--chain-only", "--chain-port", str(free_port())).exit_code == 0
    dep = Deployment.load(home / "devnet" / "deployment.json")
    os.killpg(int(dep.process["pid"]), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while "dead" not in (out := run(home, "devnet", "status").output) and time.monotonic() < deadline:
        time.sleep(0.05)
    one_line_error(run(home, "devnet", "status"), "the devnet chain is dead")
    line = one_line_error(run(home, "ledger", "settle", "--epoch", "1", "--pool-wei", "1", "--db",
                              f"sqlite:///{home / 'l.db'}"), "chain unreachable at " + dep.rpc_url)
    assert "connection refused" in line, out
    # `up` replaces a dead devnet's leftovers
    assert run(home, "devnet", "up", "--chain-only", "--chain-port", str(free_port())).exit_code == 0
    assert "verifiers active: 3" in run(home, "devnet", "status").output


def test_missing_anvil(home: Path) -> None:
    one_line_error(run(home, "devnet", "up", "--chain-only", env={"VERISWARM_ANVIL": str(home / "no-anvil")}),
                   "bash deploy/tools.sh")


def test_ledger_commands(home: Path) -> None:
    db = f"sqlite:///{home / 'ledger.db'}"
    assert "ledger ready" in run(home, "ledger", "init", "--db", db).output
    one_line_error(run(home, "ledger", "epoch", "--epoch", "4", "--db", db), "epoch 4 is not allocated")
    one_line_error(run(home, "ledger", "settle", "--epoch", "1", "--db", db, "--deployment", str(home / "none.json")),
                   "not found")


def test_ledger_record_settle_claim_through_the_cli(tiny_dir: Path, devnet: Deployment, chain: Chain,
                                                    deployment_file: Path, tmp_path: Path) -> None:
    """Receipts from a JSONL sink → `ledger record` (signatures checked) → `ledger settle` → `ledger claim`."""
    from veriswarm.keys import create_keystore, load_keystore
    from veriswarm.manifest import ModelDir
    from veriswarm.receipts import Receipt, hex32
    from veriswarm.sinks import HopRecord, JsonlSink

    manifest = ModelDir.open(tiny_dir).manifest
    env = {"VERISWARM_KEY_PASSWORD": "pw"}
    keyfiles = [tmp_path / f"node{i}.json" for i in range(2)]
    keys = []
    for f in keyfiles:
        create_keystore(f, "pw", light=True)
        keys.append(load_keystore(f, "pw"))
    sink = JsonlSink(tmp_path / "receipts.jsonl")
    for i, key in enumerate(keys):
        for step in range(3):
            r = Receipt(manifest_hash=manifest.hash, shard_index=i, session_id=hex32(os.urandom(32)), step=step,
                        start_pos=step, num_tokens=1, input_hash=hex32(os.urandom(32)), context_hash=hex32(os.urandom(32)),
                        output_hash=hex32(os.urandom(32)), request_nonce=hex32(os.urandom(32)), timestamp_ms=1)
            sink.submit(HopRecord(r.signed(key, devnet.domain), "http://n", address_of(key), b"", b""))
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    common = ["--db", db, "--deployment", str(deployment_file)]
    rec = run(tmp_path, "ledger", "record", "--receipts", str(sink.path), "--epoch", "1", "--model-dir", str(tiny_dir), *common)
    assert rec.exit_code == 0 and "6 new receipt(s) recorded in epoch 1" in rec.output, rec.output
    again = run(tmp_path, "ledger", "record", "--receipts", str(sink.path), "--epoch", "1", "--model-dir", str(tiny_dir), *common)
    assert "0 new receipt(s)" in again.output
    # a line whose signature does not recover the claimed node is refused, in one line
    bad = tmp_path / "bad.jsonl"
    bad.write_text(sink.path.read_text().splitlines()[0].replace(address_of(keys[0]), address_of(keys[1])) + "\n")
    one_line_error(run(tmp_path, "ledger", "record", "--receipts", str(bad), "--epoch", "1", "--model-dir", str(tiny_dir),
                       *common), "signature does not recover")
    settle = run(tmp_path, "ledger", "settle", "--epoch", "1", "--pool-wei", str(10**18), *common)
    assert settle.exit_code == 0 and "epoch 1 settled (sent)" in settle.output, settle.output
    shown = run(tmp_path, "ledger", "epoch", "--epoch", "1", "--db", db)
    assert "epoch 1: posted" in shown.output and address_of(keys[1]) in shown.output
    assert devnet.faucet is not None
    chain.transfer(devnet.faucet.key, address_of(keys[0]), 10**17)
    claimed = run(tmp_path, "ledger", "claim", "--epoch", "1", "--key", str(keyfiles[0]), *common, env=env)
    assert claimed.exit_code == 0 and "claimed " in claimed.output, claimed.output
    one_line_error(run(tmp_path, "ledger", "claim", "--epoch", "1", "--key", str(keyfiles[0]), *common, env=env),
                   "AlreadyClaimed")


def test_node_deployment_setting(deployment_file: Path, devnet: Deployment, tiny_dir: Path, tmp_path: Path) -> None:
    from veriswarm.errors import ConfigError
    from veriswarm.node.config import NodeConfig
    from veriswarm.node.serve import with_deployment

    cfg = with_deployment(NodeConfig.resolve(env={"VERISWARM_NODE_DEPLOYMENT": str(deployment_file)}))
    assert (cfg.chain_id, cfg.verifying_contract) == (devnet.chain_id, devnet.staking.lower())
    with pytest.raises(ConfigError, match="contradicts the deployment's chain"):
        with_deployment(NodeConfig(deployment=str(deployment_file), chain_id=5))
    with pytest.raises(ConfigError, match="contradicts the deployment's Staking"):
        with_deployment(NodeConfig(deployment=str(deployment_file), verifying_contract="0x" + "12" * 20))
    one_line_error(run(tmp_path, "node", "start", "--model-dir", str(tiny_dir), "--deployment", str(tmp_path / "none.json"),
                       env={"VERISWARM_KEY_PASSWORD": "pw"}), "deployment file")
