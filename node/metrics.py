"""Prometheus metrics of one node, in a registry of its own (several apps may share a process)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class NodeMetrics:
    registry: CollectorRegistry
    requests: Counter
    errors: Counter
    tokens: Counter
    step_seconds: Histogram
    hop_seconds: Histogram
    sessions: Gauge

    @classmethod
    def create(cls) -> NodeMetrics:
        reg = CollectorRegistry()
        return cls(
            registry=reg,
            requests=Counter("veriswarm_node_requests", "Requests handled", ["kind"], registry=reg),
            errors=Counter("veriswarm_node_errors", "Requests refused or failed", ["code"], registry=reg),
            tokens=Counter("veriswarm_node_tokens", "Token positions run through this shard", registry=reg),
            step_seconds=Histogram("veriswarm_node_forward_seconds", "Shard forward time", registry=reg,
                                   buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)),
            hop_seconds=Histogram("veriswarm_node_hop_seconds", "A session step on this node, from its message read to "
                                  "its answer encoded (relay: passed on): forward + checks, signing, encoding, hand-offs",
                                  registry=reg, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)),
            sessions=Gauge("veriswarm_node_sessions", "Open inference sessions", registry=reg),
        )
