"""Discovery: which node serves which shard. A static list for now; the on-chain registry plugs in
behind the same interface."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from veriswarm.errors import ConfigError


@dataclass(frozen=True)
class PeerInfo:
    url: str
    shard_index: int | None = None  # None: learn it from the node's /v1/info (and check it)
    address: str | None = None  # None: learn it from /v1/info (trust on first use)


class Registry(Protocol):
    async def peers(self, manifest_hash: str) -> list[PeerInfo]: ...


class StaticRegistry:
    """Peers given on the command line (``--peers URL,URL``) or in a JSON file."""

    def __init__(self, peers: list[PeerInfo]) -> None:
        if not peers:
            raise ConfigError("no peers given: pass --peers URL[,URL...] or --peers-file FILE")
        self._peers = list(peers)

    @classmethod
    def from_urls(cls, urls: str | list[str]) -> StaticRegistry:
        items = urls.split(",") if isinstance(urls, str) else urls
        return cls([PeerInfo(url=u.strip().rstrip("/")) for u in items if u.strip()])

    @classmethod
    def from_file(cls, path: Path) -> StaticRegistry:
        """A JSON list of {"url": ..., "shard": N?, "address": "0x..."?}."""
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"peers file {path} not found") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"peers file {path} is not valid JSON: {exc}") from None
        if not isinstance(data, list):
            raise ConfigError(f"peers file {path} must hold a JSON list")
        peers = []
        for i, item in enumerate(data):
            if not isinstance(item, dict) or not isinstance(item.get("url"), str):
                raise ConfigError(f"peers file {path}: entry {i} needs a \"url\" string")
            shard = item.get("shard")
            if shard is not None and not isinstance(shard, int):
                raise ConfigError(f"peers file {path}: entry {i} has a non-integer shard")
            peers.append(PeerInfo(url=item["url"].rstrip("/"), shard_index=shard, address=item.get("address")))
        return cls(peers)

    async def peers(self, manifest_hash: str) -> list[PeerInfo]:
        return list(self._peers)
