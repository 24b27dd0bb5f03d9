"""Bring a local swarm up, answer a prompt through it, show who served it and what they signed."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import typer
from veriswarm.deploy.local import LocalSwarm


def run_swarm(model_dir: Path, *, replicas: int, base_port: int, prompt: str | None, wait: bool, workdir: Path,
              max_new_tokens: int = 64) -> None:
    from veriswarm.client import Client

    from veriswarm.sinks import MemorySink

    swarm = LocalSwarm(model_dir=model_dir, workdir=workdir, replicas=replicas, base_port=base_port)
    typer.echo(f"starting {replicas} node(s) per shard from {model_dir} ...")
    t0 = time.perf_counter()
    with swarm:
        typer.echo(f"swarm up in {time.perf_counter() - t0:.1f}s:")
        for node in swarm.nodes:
            typer.echo(f"  shard {node.shard}  {node.url}  key {node.address}  log {node.log_file}")
        if prompt:
            sink = MemorySink()
            with Client(model_dir, swarm.urls, sink=sink) as client:
                typer.echo(f"\nmanifest {client.manifest_hash}\n> {prompt}\n")
                started = time.perf_counter()
                n = 0
                for piece in client.stream(messages=[{"role": "user", "content": prompt}],
                                           max_new_tokens=max_new_tokens):
                    typer.echo(piece, nl=False)
                    n += 1
                elapsed = time.perf_counter() - started
            per_node = Counter(r.node_address for r in sink.records)
            typer.echo(f"\n\n{len(sink.records)} hop receipts checked (EIP-712 signature, manifest, session, "
                       f"step, input/output hashes) in {elapsed:.2f}s:")
            for address, count in per_node.items():
                typer.echo(f"  {address}: {count} receipts")
            last = sink.records[-1].receipt
            typer.echo(f"last receipt: shard {last.shard_index} step {last.step} id {last.receipt_id()}")
        if wait:
            typer.echo("\nserving; press Ctrl-C to stop")
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass
        typer.echo("stopping nodes")
