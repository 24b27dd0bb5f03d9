"""Node configuration: one dataclass, filled from a TOML file, then env, then flags (flags win)."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from veriswarm.errors import ConfigError

ENV_PREFIX = "VERISWARM_NODE_"


@dataclass(frozen=True)
class NodeConfig:
    model_dir: Path = Path(".veriswarm/models/smollm2-4")
    shard: int = 0
    host: str = "127.0.0.1"
    port: int = 8700
    key_file: Path = Path(".veriswarm/keys/node.json")
    #: Largest HTTP body / WebSocket message accepted, in bytes.
    max_body_bytes: int = 64 * 1024 * 1024
    max_sessions: int = 32
    #: Longest session (positions) a client may open.
    max_length: int = 2048
    #: Memory the node may reserve for KV caches across sessions, in bytes.
    cache_memory_bytes: int = 2 * 1024**3
    session_idle_timeout_s: float = 300.0
    #: Forward passes allowed to run at once (each in a worker thread, off the event loop).
    max_concurrency: int = 1
    #: With max_concurrency 1, run single-position (decode) steps on the event loop instead of a worker
    #: thread: a step is a few milliseconds, and the hand-off to a thread and back costs ~0.35 ms per hop on
    #: a 2-core machine; the loop reads no other message meanwhile (prefills always go to the worker).
    inline_decode: bool = True
    torch_threads: int = 0  # 0: torch's default
    #: Intra-op threads for multi-position forwards (prefills, in the worker thread); 0: as torch_threads.
    #: A prefill is compute-bound and gains from every core; a decode step is not, and pays for a thread team.
    prefill_threads: int = 0
    #: Take part in server-to-server relay (hand outputs straight to the next node when a client asks).
    relay: bool = True
    #: Verifier addresses (comma-separated) allowed to make this node prove or trace a disputed hop; empty:
    #: anyone (development only — see node/zkauth.py).
    zk_verifiers: str = ""
    chain_id: int = 31337
    verifying_contract: str = "0x" + "00" * 20
    advertise_url: str = ""
    #: If set, refuse to start unless the model directory's manifest hashes to this (the on-chain commitment).
    manifest_hash: str = ""
    #: A deployment file (``veriswarm devnet up`` writes one): when set, receipts are signed under its chain id
    #: and Staking address, and the node registers itself there at start (idempotently).
    deployment: str = ""
    #: Stake to hold on chain, in wei (0: the contract's minimum). Used only with ``deployment``.
    stake_wei: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"port {self.port} is outside 1..65535")
        for name in ("max_body_bytes", "max_sessions", "max_length", "cache_memory_bytes", "max_concurrency"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.shard < 0:
            raise ConfigError(f"shard index must be >= 0, got {self.shard}")
        if self.torch_threads < 0 or self.prefill_threads < 0:
            raise ConfigError("torch_threads and prefill_threads must be >= 0")
        if self.stake_wei < 0:
            raise ConfigError("stake_wei must be >= 0")

    @property
    def url(self) -> str:
        return self.advertise_url or f"http://{self.host}:{self.port}"

    def advertised_at(self, port: int) -> str:
        """The advertised URL of the app this node serves on local ``port`` ("" without ``advertise_url``).

        A shard range or ``auto`` serves one port per shard, offset from ``port``; the advertised URL is
        shifted by the same offset, so one public base with a port range forwarded alike (NAT, a container's
        published ports) covers every shard: ``advertise_url = "https://node.example.org:9700"`` with
        ``--port 8700`` advertises the shard on local port 8702 as ``https://node.example.org:9702``.
        The base must be ``scheme://host[:port]``: a path cannot be shifted per shard."""
        if not self.advertise_url:
            return ""
        scheme, host, base = self.advertise_base()
        public = base + (port - self.port)
        if not 0 < public < 65536:
            raise ConfigError(f"advertise_url {self.advertise_url!r} shifted for local port {port} gives port {public}, "
                              "outside 1..65535")
        return f"{scheme}://{host}:{public}"

    def advertise_base(self) -> tuple[str, str, int]:
        """``advertise_url`` as (scheme, host, port) for shifting per shard; ConfigError unless it is
        scheme://host[:port] (http or https; no path, query, fragment or credentials)."""
        parts = urlsplit(self.advertise_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"advertise_url {self.advertise_url!r} must be http(s)://host[:port]")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
            raise ConfigError(f"advertise_url {self.advertise_url!r}: a node serving one port per shard advertises "
                              "scheme://host[:port] only (each shard's port is shifted like its local one)")
        try:
            base = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ConfigError(f"advertise_url {self.advertise_url!r} has an invalid port") from None
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return parts.scheme, host, base

    @classmethod
    def from_file(cls, path: Path) -> dict[str, Any]:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        return dict(data.get("node", data))

    @classmethod
    def resolve(cls, *, config_file: Path | None = None, env: dict[str, str] | None = None,
                **flags: Any) -> NodeConfig:
        """Defaults < config file < environment (VERISWARM_NODE_*) < flags that were given (not None)."""
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        if config_file is not None:
            values.update(cls.from_file(config_file))
        known = {f.name: f for f in fields(cls) if f.name != "extra"}
        for name in known:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = raw
        values.update({k: v for k, v in flags.items() if v is not None})
        unknown = set(values) - set(known)
        if unknown:
            raise ConfigError(f"unknown node setting(s): {', '.join(sorted(unknown))}")
        base = cls()
        return replace(base, **{k: _coerce(k, v, type(getattr(base, k))) for k, v in values.items()})


def _coerce(name: str, value: Any, kind: type) -> Any:
    try:
        if kind is Path:
            return Path(value)
        if kind is bool:
            return value if isinstance(value, bool) else str(value).lower() in {"1", "true", "yes"}
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name}={value!r} is not a valid {kind.__name__}") from None
