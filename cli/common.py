"""Shared CLI plumbing: one-line errors, the project's working folder, the default model split."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from veriswarm.errors import VeriswarmError

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(fn: F) -> F:
    """Turn any veriswarm error into a single 'error: ...' line and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except VeriswarmError as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def home() -> Path:
    return Path(os.environ.get("VERISWARM_HOME", ".veriswarm"))


def default_model_dir(shards: int = 4) -> Path:
    return home() / "models" / f"smollm2-{shards}"


def split_with_progress(model: str | None, shards: int, out: Path) -> str:
    from veriswarm.split.partition import split_model

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task("splitting", total=shards + 2)

        def report(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        manifest = split_model(model, shards, out, progress=report)
    return manifest.hash


def ensure_default_split(shards: int = 4) -> Path:
    """Split the packaged SmolLM2 once into the working folder and reuse it afterwards."""
    out = default_model_dir(shards)
    if not (out / "manifest.json").is_file():
        typer.echo(f"preparing SmolLM2-135M-Instruct in {shards} shards under {out} (once)")
        split_with_progress(None, shards, out)
    return out


def resolve_registry(peers: str | None, peers_file: Path | None, deployment: Path | None) -> tuple[Any, Any]:
    """Where to find nodes: a static list (--peers / --peers-file) or a deployment's on-chain registry
    (--deployment, which also fixes the receipt domain). Returns (registry, domain or None)."""
    from veriswarm.client import StaticRegistry
    from veriswarm.errors import ConfigError

    if sum(x is not None for x in (peers, peers_file, deployment)) != 1:
        raise ConfigError("give exactly one of --peers URL[,URL...], --peers-file FILE or --deployment FILE")
    if deployment is not None:
        from veriswarm.client.chain_registry import ChainRegistry
        from veriswarm.incentives.chain import Deployment

        dep = Deployment.load(deployment)
        return ChainRegistry(dep.rpc_url, dep.staking), dep.domain
    if peers is not None:
        return StaticRegistry.from_urls(peers), None
    assert peers_file is not None
    return StaticRegistry.from_file(peers_file), None
