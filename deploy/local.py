"""Run a swarm of node processes on loopback: one per shard (or more), each a real process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from veriswarm.errors import ConfigError
from veriswarm.keys import create_keystore, keystore_address
from veriswarm.manifest import ModelDir

DEVNET_PASSWORD = "veriswarm-devnet"  # throwaway keys for a local swarm only


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class NodeProcess:
    shard: int
    url: str
    port: int
    key_file: Path
    log_file: Path
    proc: subprocess.Popen[bytes]
    address: str = ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class LocalSwarm:
    """Start ``replicas`` node processes per shard of ``model_dir`` on loopback ports."""

    model_dir: Path
    workdir: Path
    replicas: int = 1
    host: str = "127.0.0.1"
    base_port: int = 0  # 0: pick free ports
    torch_threads: int = 1  # several node processes share this machine: one intra-op thread each (0: torch default)
    #: A prefill takes every core: a sequence's pipeline runs one shard at a time, so the node computing
    #: it has the machine to itself (several prefilling at once share it; see _python_env). 0: as torch_threads.
    prefill_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    extra_args: list[str] = field(default_factory=list)
    #: per-shard command replacing `python -m veriswarm.cli node start` (e.g. a misbehaving node in attack tests)
    commands: dict[int, list[str]] = field(default_factory=dict)
    nodes: list[NodeProcess] = field(default_factory=list)

    def _python_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["VERISWARM_KEY_PASSWORD"] = DEVNET_PASSWORD
        env.setdefault("HF_HUB_OFFLINE", "1")
        env["PYTHONUNBUFFERED"] = "1"
        # OpenMP threads that finish their part of a prefill spin-wait for the next before sleeping; with
        # several node processes prefilling at once on shared cores, libgomp's default spin starved the
        # others (3 processes × 2 threads on 2 cores: 190–330 ms a prefill against 50–60 ms at 1 thread
        # each); a short spin gave 65–78 ms there, and 23 ms for a lone prefill (22 ms at the default).
        env.setdefault("GOMP_SPINCOUNT", "1000")
        env["VERISWARM_PARENT_PID"] = str(os.getpid())  # nodes exit if this process dies
        return env

    def start(self, timeout_s: float = 180.0) -> list[NodeProcess]:
        try:
            self._spawn()
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()  # never leave half a swarm running
            raise
        return self.nodes

    def _spawn(self) -> None:
        manifest = ModelDir.open(self.model_dir).manifest
        keys = self.workdir / "keys"
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        n = 0
        for shard in range(len(manifest.shards)):
            for r in range(self.replicas):
                key = keys / f"node-{shard}-{r}.json"
                if not key.exists():
                    create_keystore(key, DEVNET_PASSWORD, light=True)
                port = self.base_port + n if self.base_port else free_port(self.host)
                n += 1
                log = logs / f"node-{shard}-{r}.log"
                proc = self._popen(shard, port, key, log)
                self.nodes.append(NodeProcess(shard, f"http://{self.host}:{port}", port, key, log, proc,
                                              keystore_address(key) or ""))

    def _popen(self, shard: int, port: int, key: Path, log: Path) -> subprocess.Popen[bytes]:
        prefix = self.commands.get(shard, [sys.executable, "-m", "veriswarm.cli", "node", "start"])
        cmd = [*prefix, "--shard", str(shard),
               "--model-dir", str(self.model_dir), "--key", str(key), "--host", self.host,
               "--port", str(port), "--torch-threads", str(self.torch_threads),
               "--prefill-threads", str(self.prefill_threads), *self.extra_args]
        with log.open("ab") as fh:
            return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=self._python_env(),
                                    start_new_session=True)

    def respawn(self, node: NodeProcess, timeout_s: float = 120.0, *, wait: bool = True) -> None:
        """Start a stopped node again on the same port with the same key (after a kill in a test);
        ``wait=False`` returns at once (see :meth:`ready`)."""
        if node.alive():
            return
        node.proc = self._popen(node.shard, node.port, node.key_file, node.log_file)
        if wait:
            self.wait_ready(timeout_s, [node])

    @staticmethod
    def ready(node: NodeProcess) -> bool:
        """Does the node answer /health right now?"""
        try:
            with urllib.request.urlopen(f"{node.url}/health", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def wait_ready(self, timeout_s: float, nodes: list[NodeProcess] | None = None) -> None:
        """Wait until every node (default: all) answers /health; one clear error if one dies or times out."""
        deadline = time.monotonic() + timeout_s
        pending = list(self.nodes if nodes is None else nodes)
        while pending:
            for node in list(pending):
                if not node.alive():
                    raise ConfigError(f"node for shard {node.shard} exited during start-up:\n{node.log_tail()}")
                try:
                    with urllib.request.urlopen(f"{node.url}/health", timeout=1) as resp:
                        if resp.status == 200:
                            pending.remove(node)
                except OSError:
                    pass
            if pending and time.monotonic() > deadline:
                raise ConfigError(f"nodes did not become ready within {timeout_s:.0f}s: "
                                  f"{[n.url for n in pending]}")
            if pending:
                time.sleep(0.2)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def kill(self, node: NodeProcess, sig: int = signal.SIGKILL) -> None:
        if node.alive():
            os.killpg(node.proc.pid, sig)
            node.proc.wait(timeout=30)

    def stop(self, timeout_s: float = 15.0) -> None:
        for node in self.nodes:
            if node.alive():
                try:
                    os.killpg(node.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            try:
                node.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(node.proc.pid, signal.SIGKILL)
                node.proc.wait()

    def __enter__(self) -> LocalSwarm:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
