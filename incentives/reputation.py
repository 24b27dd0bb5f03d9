"""The ledger's verified reputation, as a router reads it: a cached snapshot, refreshed every few seconds.

A client's router ranks replicas by measured latency weighted by reputation and must not route to a node
the ledger excluded (a proven fault, or reputation below the floor). Reading the database on every plan
would put a query on the client's hot path, so the router gets this callable instead: one query per
``ttl_s`` for every node, then dictionary look-ups. A ledger that cannot be read keeps the last snapshot
(and says so in the log) rather than failing generations.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from .ledger import Ledger, NodeState

log = logging.getLogger("veriswarm.incentives")


class _NodesSource(Protocol):
    def nodes(self) -> list[NodeState]: ...


class LedgerReputation:
    """``reputation(address) -> float`` for :class:`veriswarm.client.routing.Router`: the node's ledger
    reputation, 0.0 for an excluded node (never routed to), ``unknown`` for a node the ledger has not seen."""

    def __init__(self, ledger: Ledger | _NodesSource, *, ttl_s: float = 5.0, unknown: float | None = None) -> None:
        self.ledger = ledger
        self.ttl_s = ttl_s
        self.unknown = unknown if unknown is not None else (
            ledger.params.initial_reputation if isinstance(ledger, Ledger) else 0.5)
        self._snapshot: dict[str, float] = {}
        self._read_at = -float("inf")

    def _refresh(self) -> None:
        try:
            nodes = self.ledger.nodes()
        except Exception as exc:  # any database failure: keep serving on the last snapshot
            log.warning("ledger unreadable, routing on the last reputation snapshot: %s", exc)
            self._read_at = time.monotonic()
            return
        self._snapshot = {n.address.lower(): (0.0 if n.status == "excluded" else n.reputation) for n in nodes}
        self._read_at = time.monotonic()

    def __call__(self, address: str) -> float:
        if time.monotonic() - self._read_at > self.ttl_s:
            self._refresh()
        return self._snapshot.get(address.lower(), self.unknown)
