"""Discovery from the on-chain registry: ``Staking.activeNodes(manifestHash, shardIndex)``.

Plain ``eth_call`` over JSON-RPC with the SDK's own HTTP stack (aiohttp); no web3, no node code. Only
listed nodes are returned (registered, active, not jailed, stake ≥ minimum), each with its shard and
address, so the client checks that the node at an endpoint holds the registered key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
from eth_abi import decode, encode
from eth_utils import keccak, to_checksum_address

from veriswarm.errors import ConfigError, RemoteError

from .registry import PeerInfo

_ACTIVE_NODES = keccak(text="activeNodes(bytes32,uint32)")[:4]
_REGISTERED_NODES = keccak(text="registeredNodes(bytes32,uint32)")[:4]
#: Shards are probed in order until one has no registered node at all (or this many).
MAX_SHARDS = 4096


class ChainRegistry:
    """Peers listed in the Staking contract at ``staking_address`` on the chain at ``rpc_url``.

    ``num_shards`` bounds the lookup; without it, shards 0, 1, ... are read until one has never had a
    registered node (a client could not route past such a shard anyway).
    """

    def __init__(self, rpc_url: str, staking_address: str, *, num_shards: int | None = None,
                 timeout_s: float = 10.0) -> None:
        try:
            self.staking_address = to_checksum_address(staking_address)
        except ValueError:
            raise ConfigError(f"staking address {staking_address!r} is not an address") from None
        self.rpc_url = rpc_url
        self.num_shards = num_shards
        self.timeout_s = timeout_s
        self._id = 0

    @classmethod
    def from_deployment(cls, path: str | Path, **kwargs: Any) -> ChainRegistry:
        """Read the RPC URL and Staking address from a deployment file (``veriswarm devnet up`` writes one)."""
        try:
            data = json.loads(Path(path).read_text())
            return cls(data["rpc_url"], data["contracts"]["staking"]["address"], **kwargs)
        except FileNotFoundError:
            raise ConfigError(f"deployment file {path} not found") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"deployment file {path} is not usable: {exc}") from None

    async def _call(self, http: aiohttp.ClientSession, data: bytes) -> bytes:
        self._id += 1
        body = {"jsonrpc": "2.0", "id": self._id, "method": "eth_call",
                "params": [{"to": self.staking_address, "data": "0x" + data.hex()}, "latest"]}
        try:
            async with http.post(self.rpc_url, json=body, timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as resp:
                payload = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise RemoteError("registry", "chain_unreachable", f"{self.rpc_url}: {type(exc).__name__}: {exc}") from None
        if not isinstance(payload, dict) or payload.get("error") or not isinstance(payload.get("result"), str):
            detail = payload.get("error") if isinstance(payload, dict) else payload
            raise RemoteError("registry", "chain_error", f"eth_call to Staking {self.staking_address} failed: {detail}")
        return bytes.fromhex(payload["result"][2:])

    async def shard_peers(self, http: aiohttp.ClientSession, manifest: bytes, shard: int) -> list[PeerInfo]:
        out = await self._call(http, _ACTIVE_NODES + encode(["bytes32", "uint32"], [manifest, shard]))
        try:
            nodes, endpoints = decode(["address[]", "string[]"], out)
        except Exception as exc:  # eth-abi raises several types on malformed data
            raise RemoteError("registry", "chain_error", f"activeNodes returned undecodable data: {exc}") from None
        return [PeerInfo(url=e.rstrip("/"), shard_index=shard, address=to_checksum_address(a))
                for a, e in zip(nodes, endpoints, strict=True)]

    async def _has_registered(self, http: aiohttp.ClientSession, manifest: bytes, shard: int) -> bool:
        out = await self._call(http, _REGISTERED_NODES + encode(["bytes32", "uint32"], [manifest, shard]))
        return bool(decode(["address[]"], out)[0])

    async def peers(self, manifest_hash: str) -> list[PeerInfo]:
        try:
            manifest = bytes.fromhex(manifest_hash.removeprefix("0x"))
        except ValueError:
            manifest = b""
        if len(manifest) != 32:
            raise ConfigError(f"manifest hash {manifest_hash!r} is not 32 bytes of hex")
        peers: list[PeerInfo] = []
        async with aiohttp.ClientSession() as http:
            limit = self.num_shards if self.num_shards is not None else MAX_SHARDS
            for shard in range(limit):
                found = await self.shard_peers(http, manifest, shard)
                if not found and self.num_shards is None and not await self._has_registered(http, manifest, shard):
                    break
                peers.extend(found)
        return peers
