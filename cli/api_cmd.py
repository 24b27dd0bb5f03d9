"""`veriswarm api serve`: the OpenAI-compatible gateway."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from .common import default_model_dir, one_line_errors, resolve_registry

api_app = typer.Typer(help="The OpenAI-compatible HTTP API in front of the swarm.", no_args_is_help=True)


@api_app.command("serve")
@one_line_errors
def api_serve(
    peers: Annotated[str | None, typer.Option("--peers", help="comma-separated node URLs")] = None,
    peers_file: Annotated[Path | None, typer.Option("--peers-file", help="JSON list of {url, shard, address}")] = None,
    model_dir: Annotated[Path | None, typer.Option("--model-dir")] = None,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8080,
    api_key: Annotated[list[str] | None, typer.Option("--api-key", help="accepted bearer key (repeatable); "
                                                         "also VERISWARM_API_KEYS=k1,k2")] = None,
    requests_per_minute: Annotated[int, typer.Option("--rate-limit", help="requests per minute per key")] = 120,
    verifier: Annotated[str | None, typer.Option("--verifier", help="verifier URL to send checked hops to")] = None,
    deployment: Annotated[Path | None, typer.Option("--deployment", help="find nodes in this deployment's on-chain "
                                                    "registry (instead of --peers)")] = None,
    ledger: Annotated[str | None, typer.Option("--ledger", help="ledger database URL (read only): route by its "
                                               "verified reputation, never to excluded nodes; show reputation, slashes "
                                               "and rewards on the dashboard")] = None,
    dashboard: Annotated[bool, typer.Option("--dashboard/--no-dashboard", help="serve the live swarm view at "
                                            "/dashboard")] = True,
) -> None:
    """Serve /v1/models, /v1/chat/completions and /v1/completions (streaming and not), and /dashboard."""
    from veriswarm.api.gateway import GatewayConfig, serve
    from veriswarm.api.swarm_view import dashboard_sources
    from veriswarm.client import AsyncClient
    from veriswarm.sinks import HttpSink

    registry, domain = resolve_registry(peers, peers_file, deployment)
    keys = tuple(api_key or ()) + tuple(k for k in os.environ.get("VERISWARM_API_KEYS", "").split(",") if k)
    config = GatewayConfig(host=host, port=port, api_keys=keys, requests_per_minute=requests_per_minute,
                           dashboard=dashboard)
    config.check()
    sources = dashboard_sources(ledger_url=ledger, verifier_url=verifier, deployment=deployment)
    sink = HttpSink(verifier) if verifier else None
    reputation = None
    if sources.ledger is not None:
        from veriswarm.incentives.reputation import LedgerReputation

        reputation = LedgerReputation(sources.ledger)  # route by verified reputation; never to excluded nodes
    serve(lambda: AsyncClient(model_dir or default_model_dir(), registry, sink=sink, domain=domain,
                              reputation=reputation), config, sources)
