"""Generation across emulated hosts: client and nodes each in their own network namespace, every node
behind a delay relay (``delay_ms`` each way), the client running inside its namespace.

`run_wan` returns what the client measured there; `bench/wan.py` and the multi-host test use it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from veriswarm.errors import ConfigError
from veriswarm.keys import create_keystore
from veriswarm.manifest import ModelDir

from .local import DEVNET_PASSWORD
from .netlab import NetLab

NODE_PORT, PUBLIC_PORT = 8701, 8700


def _wait_for(path: Path, needle: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if needle in text:
            return
        if proc.poll() is not None:
            raise ConfigError(f"process exited during start-up:\n{text[-2000:]}")
        time.sleep(0.1)
    raise ConfigError(f"no {needle!r} within {timeout_s:.0f}s in {path}")


def run_wan(model_dir: Path, workdir: Path, *, delay_ms: float, prompt_ids: list[int], tokens: int,
            runs: int = 1) -> dict[str, Any]:
    manifest = ModelDir.open(model_dir).manifest
    shards = len(manifest.shards)
    hosts = ["client", *(f"n{i}" for i in range(shards))]
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VERISWARM_KEY_PASSWORD": DEVNET_PASSWORD, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "VERISWARM_PARENT_PID": str(os.getpid())}
    procs: list[subprocess.Popen[bytes]] = []
    with NetLab(hosts) as lab:
        try:
            for i in range(shards):
                host = f"n{i}"
                key = workdir / f"{host}.json"
                if not key.exists():
                    create_keystore(key, DEVNET_PASSWORD, light=True)
                log = workdir / f"{host}.log"
                with log.open("wb") as fh:
                    procs.append(subprocess.Popen(
                        [*lab.exec_prefix(host), sys.executable, "-m", "veriswarm.cli", "node", "start", "--shard",
                         str(i), "--model-dir", str(model_dir), "--key", str(key), "--host", "127.0.0.1",
                         "--port", str(NODE_PORT), "--torch-threads", "1"],
                        stdout=fh, stderr=subprocess.STDOUT, env=env))
                rlog = workdir / f"{host}-relay.log"
                with rlog.open("wb") as fh:
                    procs.append(subprocess.Popen(
                        [*lab.exec_prefix(host), sys.executable, "-m", "veriswarm.deploy.delayrelay", "--listen",
                         f"{lab.addresses[host]}:{PUBLIC_PORT}", "--to", f"127.0.0.1:{NODE_PORT}",
                         "--delay-ms", str(delay_ms)], stdout=fh, stderr=subprocess.STDOUT, env=env))
            for i in range(shards):
                _wait_for(workdir / f"n{i}.log", "veriswarm node ready", procs[2 * i], 180)
                _wait_for(workdir / f"n{i}-relay.log", "delay relay", procs[2 * i + 1], 30)
            peers = ",".join(f"http://{lab.addresses[f'n{i}']}:{PUBLIC_PORT}" for i in range(shards))
            out = subprocess.run(
                [*lab.exec_prefix("client"), sys.executable, "-m", "veriswarm.deploy.wanclient", "--model-dir",
                 str(model_dir), "--peers", peers, "--tokens", str(tokens), "--runs", str(runs),
                 "--prompt-ids", ",".join(map(str, prompt_ids))],
                capture_output=True, text=True, env=env, timeout=900)
            if out.returncode != 0:
                raise ConfigError(f"client in its namespace failed:\n{out.stderr[-3000:]}")
            result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
            result["addresses"] = dict(lab.addresses)
            return result
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
