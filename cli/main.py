"""`veriswarm` command line: thin sub-apps that parse, call and print."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from .common import default_model_dir, ensure_default_split, home, one_line_errors, split_with_progress

app = typer.Typer(help="veriswarm: verifiable decentralized LLM inference", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
node_app = typer.Typer(help="Run and manage a node that serves one shard.", no_args_is_help=True)
keys_app = typer.Typer(help="Node signing keys.", no_args_is_help=True)
devnet_app = typer.Typer(help="A local swarm on loopback for development.", no_args_is_help=True)
node_app.add_typer(keys_app, name="keys")
app.add_typer(node_app, name="node")
app.add_typer(devnet_app, name="devnet")


def _password(confirm: bool = False) -> str:
    from veriswarm.errors import NodeKeyError
    from veriswarm.keys import PASSWORD_ENV

    pw = os.environ.get(PASSWORD_ENV)
    if pw is not None:
        return pw
    if not sys.stdin.isatty():
        raise NodeKeyError(f"no key password: set {PASSWORD_ENV} (stdin is not a terminal to prompt on)")
    pw = getpass.getpass("key password: ")
    if confirm and getpass.getpass("repeat password: ") != pw:
        raise NodeKeyError("passwords do not match")
    return pw


@app.command("split")
@one_line_errors
def split_cmd(
    model: Annotated[str, typer.Argument(help="'smollm2' (packaged default), a .gguf file, or an HF model directory")] = "smollm2",
    shards: Annotated[int, typer.Option("--shards", "-n", help="number of contiguous layer shards")] = 4,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="output directory")] = None,
) -> None:
    """Cut a model into shard artifacts and write the manifest."""
    target = out or default_model_dir(shards)
    digest = split_with_progress(model, shards, target)
    typer.echo(f"manifest {digest}\nwritten to {target}")


@keys_app.command("create")
@one_line_errors
def keys_create(
    out: Annotated[Path, typer.Option("--out", "-o", help="keystore file to write")] = Path(".veriswarm/keys/node.json"),
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing key file")] = False,
) -> None:
    """Create a secp256k1 node key (eth-account keystore; password from VERISWARM_KEY_PASSWORD or a prompt)."""
    from veriswarm.keys import create_keystore

    address = create_keystore(out, _password(confirm=True), overwrite=force)
    typer.echo(f"node address {address}\nkey written to {out}")


@node_app.command("start")
@one_line_errors
def node_start(
    shard: Annotated[int | None, typer.Option("--shard", help="shard index to serve")] = None,
    model_dir: Annotated[Path | None, typer.Option("--model-dir", help="directory written by `veriswarm split`")] = None,
    key: Annotated[Path | None, typer.Option("--key", help="node keystore file")] = None,
    host: Annotated[str | None, typer.Option("--host")] = None,
    port: Annotated[int | None, typer.Option("--port")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML config file ([node] table)")] = None,
    max_sessions: Annotated[int | None, typer.Option("--max-sessions")] = None,
    max_length: Annotated[int | None, typer.Option("--max-length")] = None,
    torch_threads: Annotated[int | None, typer.Option("--torch-threads")] = None,
    chain_id: Annotated[int | None, typer.Option("--chain-id")] = None,
    verifying_contract: Annotated[str | None, typer.Option("--verifying-contract")] = None,
    manifest_hash: Annotated[str | None, typer.Option("--manifest-hash", help="refuse to start unless the manifest hashes to this")] = None,
) -> None:
    """Serve one shard over HTTP + WebSocket until interrupted (flags > VERISWARM_NODE_* env > config file)."""
    from veriswarm.node.config import NodeConfig
    from veriswarm.node.serve import run_node

    cfg = NodeConfig.resolve(config_file=config, shard=shard, model_dir=model_dir, key_file=key, host=host,
                             port=port, max_sessions=max_sessions, max_length=max_length,
                             torch_threads=torch_threads, chain_id=chain_id, verifying_contract=verifying_contract,
                             manifest_hash=manifest_hash)
    run_node(cfg, _password())


@app.command("generate")
@one_line_errors
def generate_cmd(
    prompt: Annotated[str, typer.Argument(help="the prompt (sent through the chat template unless --raw)")],
    peers: Annotated[str | None, typer.Option("--peers", help="comma-separated node URLs")] = None,
    peers_file: Annotated[Path | None, typer.Option("--peers-file", help="JSON list of {url, shard, address}")] = None,
    model_dir: Annotated[Path | None, typer.Option("--model-dir")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-m")] = 64,
    temperature: Annotated[float, typer.Option("--temperature", "-t")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
    top_k: Annotated[int, typer.Option("--top-k")] = 0,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    stop: Annotated[list[str] | None, typer.Option("--stop", help="stop string (repeatable)")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="no chat template: complete the text as is")] = False,
    receipts: Annotated[Path | None, typer.Option("--receipts", help="append checked receipts to this JSONL file")] = None,
) -> None:
    """Generate text through the swarm, streaming to the terminal."""
    from veriswarm.client import Client, StaticRegistry

    from veriswarm.errors import ConfigError
    from veriswarm.sinks import JsonlSink

    if (peers is None) == (peers_file is None):
        raise ConfigError("give exactly one of --peers URL[,URL...] or --peers-file FILE")
    registry = StaticRegistry.from_urls(peers) if peers is not None else StaticRegistry.from_file(peers_file)
    sink = JsonlSink(receipts) if receipts else None
    with Client(model_dir or default_model_dir(), registry, sink=sink) as client:
        kwargs = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                      seed=seed, stop=stop or ())
        pieces = client.stream(prompt, **kwargs) if raw else client.stream(
            messages=[{"role": "user", "content": prompt}], **kwargs)
        for piece in pieces:
            typer.echo(piece, nl=False)
        typer.echo()


@devnet_app.command("up")
@one_line_errors
def devnet_up(
    model_dir: Annotated[Path | None, typer.Option("--model-dir", help="default: SmolLM2 split in 4 shards")] = None,
    replicas: Annotated[int, typer.Option("--replicas", help="nodes per shard")] = 1,
    base_port: Annotated[int, typer.Option("--base-port", help="first port (0: any free ports)")] = 8700,
    prompt: Annotated[str | None, typer.Option("--prompt", help="answer this prompt once the swarm is up")] = None,
    exit_after_prompt: Annotated[bool, typer.Option("--exit-after-prompt", help="stop after answering --prompt")] = False,
) -> None:
    """Start one node process per shard on loopback and keep them serving until Ctrl-C."""
    from .demo import run_swarm

    run_swarm(model_dir or ensure_default_split(), replicas=replicas, base_port=base_port, prompt=prompt,
              wait=not exit_after_prompt, workdir=home() / "devnet")


@app.command("demo")
@one_line_errors
def demo_cmd(
    prompt: Annotated[str, typer.Option("--prompt")] = "In one sentence, what is a verifiable computation?",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-m")] = 48,
) -> None:
    """The main demo: split the model, start the swarm, answer a prompt, show the checked receipts."""
    from .demo import run_swarm

    run_swarm(ensure_default_split(), replicas=1, base_port=0, prompt=prompt, wait=False,
              workdir=home() / "demo", max_new_tokens=max_new_tokens)


from .api_cmd import api_app  # noqa: E402
from .swarm_cmd import swarm_app  # noqa: E402
from .verifier_cmd import verifier_app  # noqa: E402

app.add_typer(api_app, name="api")
app.add_typer(verifier_app, name="verifier")
app.add_typer(swarm_app, name="swarm")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
