"""`veriswarm dashboard`: the gateway's live swarm view, in the terminal (or opened in a browser)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Annotated, Any

import typer

from .common import one_line_errors


def _fetch(gateway: str) -> dict[str, Any]:
    from veriswarm.errors import ConfigError

    url = f"{gateway.rstrip('/')}/dashboard/state.json"
    try:
        with urllib.request.urlopen(url, timeout=15) as resp:
            state: dict[str, Any] = json.loads(resp.read())
            return state
    except (OSError, ValueError) as exc:
        reason = f"HTTP {exc.code}" if isinstance(exc, urllib.error.HTTPError) else str(exc)
        raise ConfigError(f"no dashboard at {url}: {reason} (is `veriswarm api serve` running there?)") from None


def _node_line(n: dict[str, Any]) -> str:
    # Node-supplied strings go to a terminal: drop control characters so a node cannot move the cursor
    # or recolour the screen with escape sequences.
    def clean(value: object) -> str:
        return "".join(c for c in str(value) if c.isprintable())

    latency = f"{n['latency_ms']:.1f} ms" if "latency_ms" in n else "-"
    load = f"{n['free_sessions']}/{n['max_sessions']} free" if "max_sessions" in n else "-"
    rep = (n.get("ledger") or {}).get("reputation")
    stake = (n.get("stake") or {}).get("stake_wei")
    extra = "".join([f", reputation {rep:.3f}" if rep is not None else "",
                     f", stake {int(stake) / 1e18:g} ETH" if stake else "",
                     f" ({clean(n['error'])})" if n.get("error") else ""])
    return f"    {n['state']:<11} {clean(n['address']) or '-'} {clean(n['url'])}  {latency}, {load}{extra}"


def render(state: dict[str, Any]) -> list[str]:
    tp = state["throughput"]
    lines = [f"{state['model']} · manifest {state['manifest_hash'][:18]}… · registry {state['registry']['kind']}",
             f"{tp['requests']} request(s), {tp['tokens']} tokens in the last {tp['window_s']:.0f}s"
             + (f" ({tp['tokens_per_s']} tokens/s)" if tp["tokens_per_s"] else "")]
    for shard in state["shards"]:
        a, b = shard["layers"]
        lines.append(f"shard {shard['index']} (layers {a}-{b - 1}): {shard['live']} live"
                     + {"none": "  << NO LIVE NODE", "thin": "  < thin"}.get(shard["coverage"], ""))
        lines += [_node_line(n) for n in shard["nodes"]]
    for name in ("ledger", "verifier"):
        source = state[name]
        if not source.get("configured"):
            lines.append(f"{name}: not configured")
        elif "error" in source:
            lines.append(f"{name}: unavailable ({source['error']})")
    if state["ledger"].get("slashes"):
        lines.append(f"slashes: {len(state['ledger']['slashes'])} (latest: node {state['ledger']['slashes'][0]['node_address']})")
    return lines


@one_line_errors
def dashboard_cmd(
    gateway: Annotated[str, typer.Option("--gateway", help="the gateway's base URL")] = "http://127.0.0.1:8080",
    watch: Annotated[float, typer.Option("--watch", help="refresh every this many seconds (0: print once)")] = 0.0,
    open_browser: Annotated[bool, typer.Option("--open", help="open the web dashboard in a browser")] = False,
) -> None:
    """Show the live swarm as a running gateway sees it: shards, nodes, latency, load, reputation, stake."""
    state = _fetch(gateway)
    url = f"{gateway.rstrip('/')}/dashboard"
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    while True:
        typer.echo(f"web dashboard: {url}")
        for line in render(state):
            typer.echo(line)
        if watch <= 0:
            return
        time.sleep(watch)
        typer.echo("")
        state = _fetch(gateway)
