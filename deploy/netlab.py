"""Emulated hosts on one machine: Linux network namespaces on a private bridge, for multi-host tests.

This kernel has no `netem` qdisc, so wide-area delay comes from `delayrelay` (a TCP forwarder that holds
each chunk for D ms) placed in front of each service. Traffic stays inside the namespaces made here.
Needs root (or CAP_NET_ADMIN) and iproute2; `available()` says why not when it cannot run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field


def available() -> str:
    """'' when namespaces can be made here, else the reason they cannot."""
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"vsprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ""


def _run(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, text=True)


@dataclass
class NetLab:
    """Hosts named in ``hosts``, each in its own namespace with one address on a shared bridge."""

    hosts: list[str]
    prefix: str = field(default_factory=lambda: f"vs{os.getpid() % 100000}")
    subnet: str = "10.213.0"
    addresses: dict[str, str] = field(default_factory=dict)

    @property
    def hub(self) -> str:
        return f"{self.prefix}-hub"

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def exec_prefix(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host)]

    def up(self) -> NetLab:
        try:
            _run("ip", "netns", "add", self.hub)
            _run("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
            _run("ip", "-n", self.hub, "link", "set", "br0", "up")
            for i, host in enumerate(self.hosts, start=1):
                ns, a, b = self.ns(host), f"{self.prefix}a{i}", f"{self.prefix}b{i}"
                _run("ip", "netns", "add", ns)
                _run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
                _run("ip", "link", "set", a, "netns", ns)
                _run("ip", "link", "set", b, "netns", self.hub)
                _run("ip", "-n", ns, "link", "set", a, "name", "eth0")
                address = f"{self.subnet}.{i}"
                _run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
                _run("ip", "-n", ns, "link", "set", "eth0", "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
                _run("ip", "-n", self.hub, "link", "set", b, "master", "br0")
                _run("ip", "-n", self.hub, "link", "set", b, "up")
                self.addresses[host] = address
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        for name in [*(self.ns(h) for h in self.hosts), self.hub]:
            subprocess.run(["ip", "netns", "pids", name], capture_output=True)
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", name], capture_output=True)

    def __enter__(self) -> NetLab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()
