"""What the dashboard shows: one JSON snapshot of the swarm as this gateway sees it.

Sources, each optional: the gateway's registry and router (always), a ledger (reputation, slashes,
epoch rewards), a verifier URL (recent verdicts) and the Staking contract (stake). A source that is not
configured is reported as such; one that fails is reported with its error, never raised: the page must
keep working while part of the swarm is down.

Everything a node says about itself (``/v1/info``: address, layers, load, software) is a claim, and so
is an endpoint string from a registry. It is passed through as data; the page inserts it as text only.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from veriswarm.client import AsyncClient
from veriswarm.client.registry import PeerInfo
from veriswarm.client.transport import resolve_peer
from veriswarm.errors import RemoteError

#: Below this many live replicas a shard is "thin": one failure away from having no route.
THIN_BELOW = 2
PROBE_TIMEOUT_S = 3.0
MAX_TEXT = 300  # node-supplied strings are clipped: a node cannot bloat every poll of every viewer


def _clip(value: object) -> str:
    text = str(value)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"


@dataclass(frozen=True)
class RequestSample:
    finished: float  # unix time
    tokens: int
    seconds: float


class RequestLog:
    """Recent requests through the gateway, for tokens/s (bounded; old ones fall off)."""

    def __init__(self, size: int = 200) -> None:
        self.samples: deque[RequestSample] = deque(maxlen=size)

    def record(self, tokens: int, seconds: float) -> None:
        self.samples.append(RequestSample(time.time(), tokens, max(seconds, 1e-9)))

    def view(self, window_s: float = 60.0) -> dict[str, Any]:
        now = time.time()
        recent = [s for s in self.samples if now - s.finished <= window_s]
        busy = sum(s.seconds for s in recent)
        return {"window_s": window_s, "requests": len(recent), "tokens": sum(s.tokens for s in recent),
                # per-request decode speed averaged over the window (time spent serving, not wall time)
                "tokens_per_s": round(sum(s.tokens for s in recent) / busy, 2) if busy else None,
                "recent": [{"time": s.finished, "tokens": s.tokens, "seconds": round(s.seconds, 3),
                            "tokens_per_s": round(s.tokens / s.seconds, 2)} for s in list(self.samples)[-15:][::-1]]}


StakeLookup = Callable[[str], dict[str, Any]]


@dataclass
class DashboardSources:
    """Where the optional data comes from. ``ledger`` is a veriswarm.incentives.ledger.Ledger (read only);
    ``stake`` maps a node address to its Staking.getNode record (blocking; run in a thread)."""

    ledger: Any = None
    verifier_url: str | None = None
    stake: StakeLookup | None = None
    requests: RequestLog = field(default_factory=RequestLog)


def chain_stake(deployment: Any) -> StakeLookup:
    """Stake lookups against a deployment's Staking contract (``incentives.chain``)."""
    staking = deployment.staking_contract()

    def lookup(address: str) -> dict[str, Any]:
        rec = staking.call("getNode", address)
        return {"stake_wei": str(rec["stake"]), "registered": int(rec["status"]) != 0,
                "jailed_until": int(rec["jailedUntil"]), "pending_slashes": int(rec["pendingSlashes"])}

    return lookup


def _is_address(value: str) -> bool:
    return len(value) == 42 and value.startswith("0x") and all(c in "0123456789abcdefABCDEF" for c in value[2:])


async def _probe(http: aiohttp.ClientSession, client: AsyncClient, peer: PeerInfo) -> dict[str, Any]:
    """Fetch and check one node's /v1/info, as the router would (manifest, shard, key, receipt domain)."""
    t0 = time.perf_counter()
    entry: dict[str, Any] = {"url": _clip(peer.url), "address": _clip(peer.address or ""), "shard": peer.shard_index}
    try:
        resolved = await resolve_peer(http, peer, client.manifest_hash, PROBE_TIMEOUT_S)
    except RemoteError as exc:
        return {**entry, "state": "unreachable", "error": _clip(exc)}
    except Exception as exc:  # a registry entry that is not even a URL ("javascript:…") is shown, not raised
        return {**entry, "state": "unreachable", "error": _clip(f"{type(exc).__name__}: {exc}")}
    info = resolved.info
    entry.update(address=_clip(resolved.address), shard=info.shard_index, probe_ms=round(1000 * (time.perf_counter() - t0), 1),
                 layers=[info.layer_start, info.layer_end], free_sessions=info.free_sessions,
                 max_sessions=info.max_sessions, software=_clip(info.software_version), model=_clip(info.model_name),
                 state="ok")
    domain = client.domain
    if (info.chain_id, info.verifying_contract.lower()) != (domain.chain_id, domain.verifying_contract.lower()):
        entry.update(state="wrong_domain", error=f"signs receipts for chain {info.chain_id} / "
                     f"{_clip(info.verifying_contract)}, not this gateway's")
    return entry


def _add_routing(entry: dict[str, Any], client: AsyncClient) -> None:
    stats = client.router.peers.get(entry["url"])
    if stats is not None and stats.peer.address.lower() == entry["address"].lower():
        entry["latency_ms"], entry["latency_source"] = round(1000 * stats.rtt_s, 1), "routing"
        entry["strikes"] = stats.strikes
        left = stats.banned_until - time.monotonic()
        if left > 0:
            entry.update(banned_s=round(left), state="banned" if entry["state"] == "ok" else entry["state"])
    elif "probe_ms" in entry:
        entry["latency_ms"], entry["latency_source"] = entry["probe_ms"], "probe"


def _ledger_view(ledger: Any, epochs: int = 3) -> dict[str, Any]:
    """Reputation, slashes and the latest epoch allocations (blocking: SQL)."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from veriswarm.incentives.models import EpochRow

    nodes = {n.address.lower(): {"reputation": round(n.reputation, 4), "status": n.status,
                                 "audits_passed": n.audits_passed, "audits_failed": n.audits_failed,
                                 "excluded_reason": n.excluded_reason} for n in ledger.nodes()}
    slashes = [{**s, "amount": None if s["amount"] is None else str(s["amount"])} for s in ledger.slashes()[-20:][::-1]]
    with Session(ledger.engine) as s:  # the Ledger has no "list epochs" call; read its table directly
        numbers = list(s.scalars(select(EpochRow.epoch).order_by(EpochRow.epoch.desc()).limit(epochs)))
    allocations = []
    for number in numbers:
        alloc = ledger.epoch(number)
        if alloc is not None:
            allocations.append({"epoch": alloc.epoch, "status": alloc.status, "pool": str(alloc.pool),
                                "total": str(alloc.total), "tx_hash": alloc.tx_hash,
                                "amounts": {a: str(v) for a, v in sorted(alloc.amounts.items())}})
    return {"configured": True, "nodes": nodes, "slashes": slashes, "epochs": allocations}


async def _verifier_view(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    try:
        async with http.get(f"{url.rstrip('/')}/v1/verdicts", timeout=aiohttp.ClientTimeout(total=2.0)) as resp:
            if resp.status != 200:
                return {"configured": True, "url": url, "error": f"GET /v1/verdicts answered {resp.status}"}
            body = await resp.json()
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        return {"configured": True, "url": url, "error": f"{type(exc).__name__}: {exc}"}
    verdicts = body.get("verdicts") if isinstance(body, dict) else None
    if not isinstance(verdicts, list):
        return {"configured": True, "url": url, "error": "unexpected /v1/verdicts body"}
    keep = ("node", "shard", "session", "passed", "summary", "time", "evidence", "slash_id")
    recent = [{k: v for k, v in v.items() if k in keep} for v in verdicts[-20:][::-1] if isinstance(v, dict)]
    return {"configured": True, "url": url, "verdicts": recent, "stats": body.get("stats", {})}


async def _guarded(what: str, work: Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = await work
        return result
    except Exception as exc:  # one broken source must not take the whole dashboard down
        return {"configured": True, "error": f"{what}: {type(exc).__name__}: {_clip(exc)}"}


async def _stakes(lookup: StakeLookup, addresses: list[str]) -> dict[str, Any]:
    async def one(address: str) -> tuple[str, dict[str, Any]]:
        try:
            return address, await asyncio.to_thread(lookup, address)
        except Exception as exc:  # chain down or a revert: show it per node
            return address, {"error": _clip(exc)}

    return {"configured": True, "nodes": dict(await asyncio.gather(*(one(a) for a in addresses)))}


def _node_state(node: dict[str, Any]) -> None:
    """A node the ledger or the chain says was slashed shows as slashed, whatever it answers."""
    ledger, stake = node.get("ledger") or {}, node.get("stake") or {}
    reason = ledger.get("excluded_reason") or ""
    if reason.startswith("slashed") or node.get("slash_recorded") or stake.get("pending_slashes"):
        node["state"] = "slashed"
    elif ledger.get("status") == "excluded" and node["state"] == "ok":
        node["state"] = "excluded"


async def collect(client: AsyncClient, sources: DashboardSources, http: aiohttp.ClientSession) -> dict[str, Any]:
    registry_kind = type(client.registry).__name__
    try:
        peers = await client.registry.peers(client.manifest_hash)
        registry: dict[str, Any] = {"kind": registry_kind, "peers": len(peers)}
    except Exception as exc:  # e.g. the chain RPC is down: show the last known router view only
        peers, registry = [], {"kind": registry_kind, "error": _clip(exc)}
    not_configured: dict[str, Any] = {"configured": False}
    ledger_task = (_guarded("ledger", asyncio.to_thread(_ledger_view, sources.ledger)) if sources.ledger is not None
                   else asyncio.sleep(0, not_configured))
    verifier_task = (_guarded("verifier", _verifier_view(http, sources.verifier_url)) if sources.verifier_url
                     else asyncio.sleep(0, not_configured))
    nodes, ledger, verifier = await asyncio.gather(asyncio.gather(*(_probe(http, client, p) for p in peers)),
                                                   ledger_task, verifier_task)
    # Stake is looked up for the registry's address when it states one (on chain it does): that one is
    # not the node's claim.
    addresses = sorted({(p.address or "") for p in peers if p.address and _is_address(p.address)})
    stake = await _stakes(sources.stake, addresses) if sources.stake is not None else not_configured
    slashed = {s["node_address"].lower() for s in ledger.get("slashes", [])}
    for node in nodes:
        _add_routing(node, client)
        key = node["address"].lower()
        node["ledger"] = ledger.get("nodes", {}).get(key)
        node["slash_recorded"] = key in slashed
        node["stake"] = next((v for a, v in stake.get("nodes", {}).items() if a.lower() == key), None)
        _node_state(node)
    shards = []
    for spec in client.manifest.shards:
        mine = sorted((n for n in nodes if n["shard"] == spec.index), key=lambda n: n.get("latency_ms") or 1e9)
        live = sum(n["state"] == "ok" for n in mine)
        shards.append({"index": spec.index, "layers": [spec.layer_start, spec.layer_end], "live": live,
                       "coverage": "none" if live == 0 else "thin" if live < THIN_BELOW else "ok", "nodes": mine})
    known = {s.index for s in client.manifest.shards}
    if "nodes" in ledger:
        ledger = {k: v for k, v in ledger.items() if k != "nodes"}  # merged into the nodes above
    return {"generated_at": time.time(), "manifest_hash": client.manifest_hash, "model": client.manifest.model_name,
            "registry": registry, "shards": shards, "unplaced": [n for n in nodes if n["shard"] not in known],
            "router": {"bans": client.router.stats.bans, "failovers": client.router.stats.failovers,
                       "events": [_clip(e) for e in client.router.stats.events[-10:][::-1]]},
            "throughput": sources.requests.view(), "ledger": ledger, "verifier": verifier,
            "stake": {"configured": stake.get("configured", False)}}


def dashboard_sources(*, ledger_url: str | None, verifier_url: str | None, deployment: Any) -> DashboardSources:
    """Open what the command line names (``veriswarm api serve --ledger/--verifier/--deployment``)."""
    from pathlib import Path

    from veriswarm.errors import ConfigError

    ledger = None
    if ledger_url:
        from veriswarm.incentives.ledger import Ledger

        # Read only: a missing SQLite file would otherwise be created empty and show an empty ledger.
        if ledger_url.startswith("sqlite:///") and not Path(ledger_url.removeprefix("sqlite:///")).exists():
            raise ConfigError(f"ledger database {ledger_url} does not exist")
        ledger = Ledger(ledger_url)
    stake = None
    if deployment is not None:
        from veriswarm.incentives.chain import Deployment

        stake = chain_stake(Deployment.load(deployment))
    return DashboardSources(ledger=ledger, verifier_url=verifier_url, stake=stake)
