"""`veriswarm swarm plan`: the placement for a set of measured nodes, and the bottleneck it gives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .common import default_model_dir, one_line_errors

swarm_app = typer.Typer(help="Plan the swarm: which node serves which shards.", no_args_is_help=True)


@swarm_app.command("plan")
@one_line_errors
def plan_cmd(
    nodes_file: Annotated[Path, typer.Argument(help='JSON list of {"name", "speed" (layer-tokens/s), "capacity" (layers)}')],
    model_dir: Annotated[Path | None, typer.Option("--model-dir", help="split whose shard sizes to use")] = None,
) -> None:
    """Print each node's shard range and the swarm's bottleneck throughput (tokens/s)."""
    from veriswarm.errors import ConfigError
    from veriswarm.manifest import ModelDir
    from veriswarm.placement import NodeCapacity, bottleneck, coverage, place

    try:
        raw = json.loads(Path(nodes_file).read_text())
        nodes = [NodeCapacity(str(n["name"]), float(n["speed"]), int(n["capacity"])) for n in raw]
    except FileNotFoundError:
        raise ConfigError(f"nodes file {nodes_file} not found") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"nodes file {nodes_file}: expected a list of {{name, speed, capacity}} ({exc})") from None
    costs = [s.num_layers for s in ModelDir.open(model_dir or default_model_dir()).manifest.shards]
    plan = place(costs, nodes)
    for node, r in zip(nodes, plan, strict=True):
        where = "nothing (no range fits its memory)" if r is None else (
            f"shard {r[0]}" if r[0] == r[1] else f"shards {r[0]}-{r[1]}")
        typer.echo(f"{node.name:>16}  {where}")
    cover = coverage(costs, nodes, plan)
    typer.echo("coverage (tokens/s): " + ", ".join(f"shard {i}: {c:.1f}" for i, c in enumerate(cover)))
    typer.echo(f"bottleneck: {bottleneck(costs, nodes, plan):.1f} tokens/s")
