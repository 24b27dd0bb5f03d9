"""Replica choice: which node serves each shard for a session, judged by what the client measures.

Nodes' claims (free session slots) are only a tie-breaker; measured round trips and observed behaviour
decide. A node that fails (unreachable, stalls, closes mid-frame, answers with a bad receipt) is banned
with exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from veriswarm.errors import RemoteError
from veriswarm.receipts import ReceiptDomain

from .registry import PeerInfo, Registry
from .transport import ResolvedPeer, resolve_peer

log = logging.getLogger("veriswarm.client")


@dataclass
class PeerStats:
    peer: ResolvedPeer
    rtt_s: float  # EMA of measured round trips (info fetch, then step times)
    strikes: int = 0
    banned_until: float = 0.0


@dataclass
class RouterStats:
    bans: int = 0
    failovers: int = 0
    events: list[str] = field(default_factory=list)


class Router:
    def __init__(self, registry: Registry, *, manifest_hash: str, num_shards: int, domain: ReceiptDomain,
                 timeout_s: float, ban_base_s: float = 5.0, ban_max_s: float = 300.0,
                 reputation: Callable[[str], float] | None = None) -> None:
        self.registry = registry
        self.manifest_hash = manifest_hash
        self.num_shards = num_shards
        self.domain = domain
        self.timeout_s = timeout_s
        self.ban_base_s, self.ban_max_s = ban_base_s, ban_max_s
        self.reputation = reputation
        self.peers: dict[str, PeerStats] = {}
        self.stats = RouterStats()
        self._problems: list[str] = []

    async def refresh(self, http: aiohttp.ClientSession) -> None:
        """Ask the registry for peers and check each one (manifest, shard, key, receipt domain)."""
        candidates = await self.registry.peers(self.manifest_hash)

        async def check(peer: PeerInfo) -> tuple[ResolvedPeer, float] | None:
            if self._banned(peer.url):
                return None
            t0 = time.perf_counter()
            try:
                resolved = await resolve_peer(http, peer, self.manifest_hash, self.timeout_s)
            except RemoteError as exc:
                self._problems.append(str(exc))
                return None
            rtt = time.perf_counter() - t0
            info = resolved.info
            if (info.chain_id, info.verifying_contract.lower()) != (self.domain.chain_id,
                                                                    self.domain.verifying_contract.lower()):
                self._problems.append(f"{peer.url}: signs receipts for chain {info.chain_id} / "
                                      f"{info.verifying_contract}, not this client's domain")
                return None
            return resolved, rtt

        self._problems = []
        for result in await asyncio.gather(*(check(p) for p in candidates)):
            if result is None:
                continue
            resolved, rtt = result
            old = self.peers.get(resolved.url)
            if old is None or old.peer.address != resolved.address:
                self.peers[resolved.url] = PeerStats(resolved, rtt)
            else:
                old.peer = resolved
                old.rtt_s = 0.7 * old.rtt_s + 0.3 * rtt

    def _banned(self, url: str) -> bool:
        stats = self.peers.get(url)
        return stats is not None and stats.banned_until > time.monotonic()

    def ban(self, url: str, reason: str) -> None:
        stats = self.peers.get(url)
        if stats is None:
            return
        stats.strikes += 1
        duration = min(self.ban_max_s, self.ban_base_s * 2 ** (stats.strikes - 1))
        stats.banned_until = time.monotonic() + duration
        self.stats.bans += 1
        event = f"banned {url} (shard {stats.peer.shard_index}) for {duration:.0f}s: {reason}"
        self.stats.events.append(event)
        log.warning(event)

    def pardon(self, url: str) -> None:
        """Lift a ban (an operator knows the node was restarted); its strike count stays."""
        stats = self.peers.get(url)
        if stats is not None:
            stats.banned_until = 0.0

    def observe(self, url: str, seconds: float) -> None:
        stats = self.peers.get(url)
        if stats is not None:
            stats.rtt_s = 0.8 * stats.rtt_s + 0.2 * seconds

    def candidates(self, shard: int) -> list[ResolvedPeer]:
        """Live replicas of a shard, best first: measured latency weighted by verified reputation, then
        reputation, then claimed load. A node with reputation 0 (the ledger excluded it) is left out."""
        rep = {s.peer.url: (self.reputation(s.peer.address) if self.reputation else 1.0) for s in self.peers.values()}
        live = [s for s in self.peers.values()
                if s.peer.shard_index == shard and not self._banned(s.peer.url) and rep[s.peer.url] > 0]

        def key(s: PeerStats) -> tuple[float, float, int]:
            r = rep[s.peer.url]
            return (s.rtt_s / r, -r, -s.peer.info.free_sessions)

        return [s.peer for s in sorted(live, key=key)]

    async def plan(self, http: aiohttp.ClientSession) -> list[list[ResolvedPeer]]:
        await self.refresh(http)
        plan = [self.candidates(i) for i in range(self.num_shards)]
        missing = [i for i, c in enumerate(plan) if not c]
        if missing:
            detail = f" ({'; '.join(self._problems)})" if self._problems else ""
            raise RemoteError("registry", "no_route", f"no reachable node serves shard(s) {missing}{detail}")
        return plan
