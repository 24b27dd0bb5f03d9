"""The swarm as an auto-placing node sees it: registry entries, then what each live endpoint says it serves.

Entries come from the on-chain registry (``Staking.activeNodes`` per shard) or from a static peers file
(the JSON list ``veriswarm generate --peers-file`` reads: ``[{"url": ..., "shard": N?}, ...]``). Only
endpoints that answer count: a registry lists dead nodes too, and coverage nobody answers for is a hole.

A host started with ``--shard auto`` or a range answers ``GET /v1/placement`` with its node id, measured
speed and whole range (:func:`add_placement_route`), so the shards one process hosts are seen as one node
sharing its speed. A plain ``--shard N`` node only has ``/v1/info``: it counts as serving that one shard at
this node's own speed (the best guess without a measurement). Both are the peer's claims; a peer lying
here can only make this node pick a less useful range, never break verification.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from veriswarm.errors import ConfigError

from .autoplace import Peer

PLACEMENT_PATH = "/v1/placement"
Entry = tuple[str, int | None]  # (url, shard the registry says it serves, if it says)


def file_entries(path: Path) -> list[Entry]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"peers file {path} not found") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"peers file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, list) or not all(isinstance(i, dict) and isinstance(i.get("url"), str) for i in data):
        raise ConfigError(f"peers file {path} must hold a JSON list of {{\"url\": ..., \"shard\": N?}}")
    return [(i["url"].rstrip("/"), i["shard"] if isinstance(i.get("shard"), int) else None) for i in data]


def chain_entries(deployment: str, manifest_hash: str, num_shards: int) -> list[Entry]:
    """Every listed node of every shard of this manifest (blocking JSON-RPC: run it in a thread)."""
    from veriswarm.incentives.chain import Deployment

    staking = Deployment.load(deployment).staking_contract()
    manifest = bytes.fromhex(manifest_hash.removeprefix("0x"))
    out: list[Entry] = []
    for shard in range(num_shards):
        listed = staking.call("activeNodes", manifest, shard)
        nodes, endpoints = (listed["nodes"], listed["endpoints"]) if isinstance(listed, dict) else listed
        out.extend((str(e).rstrip("/"), shard) for e in endpoints[:len(nodes)])
    return out


def add_placement_route(app: web.Application, report: Callable[[], dict[str, Any]]) -> None:
    async def placement(_request: web.Request) -> web.Response:
        return web.json_response(report())

    app.router.add_get(PLACEMENT_PATH, placement)


async def _get(http: aiohttp.ClientSession, url: str, timeout_s: float) -> Any:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            return await resp.json() if resp.status == 200 else None
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return None


def _span(raw: Any, num_shards: int) -> tuple[int, int] | None:
    if (isinstance(raw, list) and len(raw) == 2 and all(isinstance(v, int) for v in raw)
            and 0 <= raw[0] <= raw[1] < num_shards):
        return raw[0], raw[1]
    return None


async def probe(http: aiohttp.ClientSession, url: str, expected_shard: int | None, *, manifest_hash: str,
                num_shards: int, default_speed: float, timeout_s: float = 2.0) -> Peer | None:
    """What the endpoint at ``url`` serves, or None if it does not answer for this manifest."""
    body = await _get(http, url + PLACEMENT_PATH, timeout_s)
    if isinstance(body, dict) and body.get("manifest_hash") == manifest_hash:
        span = _span(body.get("range"), num_shards)
        speed = body.get("speed", default_speed)
        speed = default_speed if speed is None else speed  # a fixed-range host does not measure itself
        if (span is None or not isinstance(speed, int | float) or not math.isfinite(speed) or speed <= 0
                or not isinstance(body.get("node"), str)):
            return None  # serving nothing (mid-start) or malformed
        return Peer(body["node"], float(speed), span)
    info = await _get(http, url + "/v1/info", timeout_s)
    if not isinstance(info, dict) or info.get("manifest_hash") != manifest_hash:
        return None
    shard = info.get("shard_index")
    if not isinstance(shard, int) or not 0 <= shard < num_shards or expected_shard not in (None, shard):
        return None
    return Peer(str(info.get("address") or url), default_speed, (shard, shard))


async def read_peers(entries: list[Entry], *, self_id: str, manifest_hash: str, num_shards: int,
                     default_speed: float, timeout_s: float = 2.0) -> list[Peer]:
    """The other live nodes, one per node id (a host's several endpoints report the same id and range)."""
    async with aiohttp.ClientSession() as http:
        found = await asyncio.gather(*(probe(http, url, shard, manifest_hash=manifest_hash, num_shards=num_shards,
                                             default_speed=default_speed, timeout_s=timeout_s)
                                       for url, shard in dict.fromkeys(entries)))
    peers: dict[str, Peer] = {}
    for peer in found:
        if peer is not None and peer.node != self_id:
            peers.setdefault(peer.node, peer)
    return [peers[k] for k in sorted(peers)]
