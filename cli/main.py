"""`veriswarm` command line: thin sub-apps that parse, call and print."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import default_model_dir, ensure_default_split, home, one_line_errors, resolve_registry, split_with_progress

app = typer.Typer(help="veriswarm: verifiable decentralized LLM inference", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
node_app = typer.Typer(help="Run and manage a node that serves one shard.", no_args_is_help=True)
keys_app = typer.Typer(help="Node signing keys.", no_args_is_help=True)
devnet_app = typer.Typer(help="A local chain and swarm on loopback for development.", no_args_is_help=True)
ledger_app = typer.Typer(help="The off-chain ledger: epochs, settlement, claims.", no_args_is_help=True)
node_app.add_typer(keys_app, name="keys")
app.add_typer(node_app, name="node")
app.add_typer(devnet_app, name="devnet")
app.add_typer(ledger_app, name="ledger")


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
    svd: Annotated[str | None, typer.Option("--svd", help="SVD-compress the shards: bytes=0.8 or "
                   "max-ppl-increase=5%, optionally method=plain|asvd|whiten|best, dtype=fp16|fp32 (docs/svd.md)")] = None,
) -> None:
    """Cut a model into shard artifacts and write the manifest."""
    if svd is None:
        target = out or default_model_dir(shards)
        digest = split_with_progress(model, shards, target)
    else:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from veriswarm.split.partition import split_model

        target = out or default_model_dir(shards).with_name(f"{default_model_dir(shards).name}-svd")
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), transient=True) as bar:
            task = bar.add_task("splitting", total=shards + 2)
            digest = split_model(model, shards, target, svd=svd, progress=lambda what, done, total: bar.update(
                task, description=what, completed=done, total=total)).hash
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
    shard: Annotated[str | None, typer.Option("--shard", help="shard index to serve, a range (2-3: one port "
                     "per shard from --port), or 'auto' (pick and move by the swarm's needs)")] = None,
    model_dir: Annotated[Path | None, typer.Option("--model-dir", help="directory written by `veriswarm split`")] = None,
    key: Annotated[Path | None, typer.Option("--key", help="node keystore file")] = None,
    host: Annotated[str | None, typer.Option("--host")] = None,
    port: Annotated[int | None, typer.Option("--port")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML config file ([node] table)")] = None,
    max_sessions: Annotated[int | None, typer.Option("--max-sessions")] = None,
    max_length: Annotated[int | None, typer.Option("--max-length")] = None,
    torch_threads: Annotated[int | None, typer.Option("--torch-threads", help="intra-op threads (0: torch's default)")] = None,
    prefill_threads: Annotated[int | None, typer.Option("--prefill-threads", help="intra-op threads for prefills "
                               "(0: as --torch-threads)")] = None,
    chain_id: Annotated[int | None, typer.Option("--chain-id")] = None,
    verifying_contract: Annotated[str | None, typer.Option("--verifying-contract")] = None,
    manifest_hash: Annotated[str | None, typer.Option("--manifest-hash", help="refuse to start unless the manifest hashes to this")] = None,
    deployment: Annotated[Path | None, typer.Option("--deployment", help="deployment file: register on that chain, sign for it")] = None,
    stake_wei: Annotated[int | None, typer.Option("--stake-wei", help="stake to hold on chain (default: the contract's minimum)")] = None,
    peers: Annotated[Path | None, typer.Option("--peers", help="auto: JSON peers file to read the swarm from "
                     "(without --deployment)")] = None,
    memory_budget: Annotated[int | None, typer.Option("--memory-budget", help="auto: bytes for shard weights "
                             "(default: available memory minus the KV-cache budget)")] = None,
    recheck_s: Annotated[float | None, typer.Option("--recheck-s", help="auto: seconds between re-checks (60)")] = None,
    move_threshold: Annotated[float | None, typer.Option("--move-threshold", help="auto: relative bottleneck gain "
                              "a move must beat (0.10)")] = None,
    cooldown_s: Annotated[float | None, typer.Option("--cooldown-s", help="auto: no move this soon after the "
                          "last one, unless it fills a hole (300)")] = None,
    drain_s: Annotated[float | None, typer.Option("--drain-s", help="auto: grace for open sessions on a shard "
                       "given up (60)")] = None,
) -> None:
    """Serve a shard (or a range, or auto-placed shards) over HTTP + WebSocket until interrupted
    (flags > VERISWARM_NODE_* env > config file)."""
    from veriswarm.errors import ConfigError
    from veriswarm.node.config import NodeConfig
    from veriswarm.node.shardchoice import ShardChoice

    choice = ShardChoice.parse(shard)
    auto_flags = {"--peers": peers, "--memory-budget": memory_budget, "--recheck-s": recheck_s,
                  "--move-threshold": move_threshold, "--cooldown-s": cooldown_s, "--drain-s": drain_s}
    given = [name for name, value in auto_flags.items() if value is not None]
    if given and (choice is None or not choice.auto):
        raise ConfigError(f"{', '.join(given)} only apply with --shard auto")
    cfg = NodeConfig.resolve(config_file=config, shard=choice.single if choice else None, model_dir=model_dir,
                             key_file=key, host=host, port=port, max_sessions=max_sessions, max_length=max_length,
                             torch_threads=torch_threads, prefill_threads=prefill_threads, chain_id=chain_id,
                             verifying_contract=verifying_contract, manifest_hash=manifest_hash,
                             deployment=str(deployment) if deployment else None, stake_wei=stake_wei)
    if choice is None or choice.single is not None:
        from veriswarm.node.serve import run_node

        run_node(cfg, _password())
    elif choice.span is not None:
        from veriswarm.node.multiserve import run_span

        run_span(cfg, _password(), choice.span)
    else:
        from veriswarm.node.autoplace import Policy
        from veriswarm.node.autorun import AutoOptions, run_auto

        policy = Policy(**{k: v for k, v in {"threshold": move_threshold, "cooldown_s": cooldown_s}.items()
                           if v is not None})
        options = AutoOptions(**{k: v for k, v in {"peers_file": peers, "memory_budget": memory_budget,
                                                   "recheck_s": recheck_s, "drain_s": drain_s}.items()
                                 if v is not None}, policy=policy)
        run_auto(cfg, _password(), options)


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
    deployment: Annotated[Path | None, typer.Option("--deployment", help="find nodes in this deployment's on-chain "
                                                    "registry (instead of --peers)")] = None,
) -> None:
    """Generate text through the swarm, streaming to the terminal."""
    from veriswarm.client import Client
    from veriswarm.sinks import JsonlSink

    registry, domain = resolve_registry(peers, peers_file, deployment)
    sink = JsonlSink(receipts) if receipts else None
    with Client(model_dir or default_model_dir(), registry, sink=sink, domain=domain) as client:
        kwargs = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                      seed=seed, stop=stop or ())
        pieces = client.stream(prompt, **kwargs) if raw else client.stream(
            messages=[{"role": "user", "content": prompt}], **kwargs)
        for piece in pieces:
            typer.echo(piece, nl=False)
        typer.echo()


def _devnet_dir() -> Path:
    return home() / "devnet"


def _deployment_file(path: Path | None) -> Path:
    return path or Path(os.environ.get("VERISWARM_DEPLOYMENT") or _devnet_dir() / "deployment.json")


@devnet_app.command("up")
@one_line_errors
def devnet_up(
    model_dir: Annotated[Path | None, typer.Option("--model-dir", help="default: SmolLM2 split in 4 shards")] = None,
    replicas: Annotated[int, typer.Option("--replicas", help="nodes per shard")] = 1,
    base_port: Annotated[int, typer.Option("--base-port", help="first port (0: any free ports)")] = 8700,
    prompt: Annotated[str | None, typer.Option("--prompt", help="answer this prompt once the swarm is up")] = None,
    exit_after_prompt: Annotated[bool, typer.Option("--exit-after-prompt", help="stop after answering --prompt")] = False,
    chain_port: Annotated[int | None, typer.Option("--chain-port", help="anvil port (default 8545; free with --base-port 0)")] = None,
    chain_only: Annotated[bool, typer.Option("--chain-only", help="start the chain, deploy, write the deployment file, return")] = False,
    keep_chain: Annotated[bool, typer.Option("--keep-chain", help="leave the chain running when the nodes stop")] = False,
) -> None:
    """Start anvil, deploy the contracts, write the deployment file, then one node process per shard that
    registers itself on chain; serve until Ctrl-C (the chain stops with the nodes unless --keep-chain)."""
    from veriswarm.deploy.devnet import DEFAULT_PORT, deployment_path, free_port, serve_swarm, start_devnet, stop_devnet

    model = None if chain_only else (model_dir or ensure_default_split())
    state = _devnet_dir()
    port = chain_port if chain_port is not None else (free_port() if base_port == 0 else DEFAULT_PORT)
    dep = start_devnet(state, port=port)
    path = deployment_path(state)
    typer.echo(f"chain {dep.chain_id} at {dep.rpc_url} (anvil pid {dep.process.get('pid')}): Staking {dep.staking}, "
               f"Rewards {dep.rewards}, {len(dep.verifiers)} verifiers\ndeployment file {path}")
    if chain_only:
        typer.echo("chain left running; `veriswarm devnet down` stops it")
        return
    assert model is not None
    try:
        serve_swarm(path, model, workdir=state, replicas=replicas, base_port=base_port, prompt=prompt,
                    wait=not exit_after_prompt, echo=typer.echo)
    finally:
        if keep_chain:
            typer.echo(f"chain left running at {dep.rpc_url}; `veriswarm devnet down` stops it")
        else:
            typer.echo(stop_devnet(state))


@devnet_app.command("down")
@one_line_errors
def devnet_down() -> None:
    """Stop the devnet chain and remove its state (idempotent)."""
    from veriswarm.deploy.devnet import stop_devnet

    typer.echo(stop_devnet(_devnet_dir()))


@devnet_app.command("status")
@one_line_errors
def devnet_status_cmd() -> None:
    """Show the running devnet chain (exit status 1 when none is running or it is dead)."""
    from veriswarm.deploy.devnet import devnet_status

    for line in devnet_status(_devnet_dir()):
        typer.echo(line)


def _ledger(db: str | None) -> Any:
    from veriswarm.incentives.ledger import Ledger

    url = db or os.environ.get("VERISWARM_LEDGER_URL") or f"sqlite:///{home() / 'ledger.db'}"
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(url)
    ledger.migrate()
    return ledger


DbOption = Annotated[str | None, typer.Option("--db", help="ledger database URL (default: VERISWARM_LEDGER_URL or home sqlite)")]
DeploymentOption = Annotated[Path | None, typer.Option("--deployment", help="deployment file (default: the devnet's)")]


@ledger_app.command("init")
@one_line_errors
def ledger_init(db: DbOption = None) -> None:
    """Create or upgrade the ledger schema."""
    ledger = _ledger(db)
    typer.echo(f"ledger ready at {ledger.url}")
    ledger.close()


@ledger_app.command("record")
@one_line_errors
def ledger_record(
    receipts: Annotated[Path, typer.Option("--receipts", help="JSONL file written by a JsonlSink")],
    epoch: Annotated[int, typer.Option("--epoch", help="epoch to book the receipts in")],
    model_dir: Annotated[Path | None, typer.Option("--model-dir", help="the split the receipts are for (layers per shard)")] = None,
    db: DbOption = None,
    deployment: DeploymentOption = None,
) -> None:
    """Check receipts (signature recovers the node's key under the deployment's domain) and record them."""
    import json

    from veriswarm.incentives.chain import Deployment
    from veriswarm.incentives.errors import LedgerError
    from veriswarm.incentives.ledger import ReceiptEntry
    from veriswarm.manifest import ModelDir
    from veriswarm.receipts import Receipt

    dep = Deployment.load(_deployment_file(deployment))
    manifest = ModelDir.open(model_dir or default_model_dir()).manifest
    entries = []
    try:
        lines = receipts.read_text().splitlines()
    except OSError as exc:
        raise LedgerError(f"cannot read {receipts}: {exc.strerror or exc}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            receipt = Receipt.from_json(item["receipt"])
            node = str(item["node_address"])
        except (ValueError, KeyError, TypeError) as exc:
            raise LedgerError(f"{receipts}:{n}: not a receipt line ({exc})") from None
        if receipt.manifest_hash != manifest.hash:
            raise LedgerError(f"{receipts}:{n}: receipt for manifest {receipt.manifest_hash}, not {manifest.hash}")
        signer = receipt.signer(dep.domain)
        if signer.lower() != node.lower():
            raise LedgerError(f"{receipts}:{n}: signature does not recover {node} under chain {dep.chain_id}")
        entries.append(ReceiptEntry(receipt, signer, manifest.shard(receipt.shard_index).num_layers, epoch))
    ledger = _ledger(db)
    try:
        added = ledger.record_receipts(entries)
    finally:
        ledger.close()
    typer.echo(f"{added} new receipt(s) recorded in epoch {epoch} ({len(entries) - added} already there)")


@ledger_app.command("settle")
@one_line_errors
def ledger_settle(
    epoch: Annotated[int, typer.Option("--epoch", help="epoch to settle (>= 1)")],
    pool_wei: Annotated[int | None, typer.Option("--pool-wei", help="reward pool of the epoch (needed the first time)")] = None,
    current_epoch: Annotated[int | None, typer.Option("--current-epoch", help="refuse epochs inside the payout delay")] = None,
    db: DbOption = None,
    deployment: DeploymentOption = None,
) -> None:
    """Allocate the epoch, collect the verifier quorum's signatures, post the root; safe to re-run."""
    from veriswarm.incentives.chain import Deployment
    from veriswarm.incentives.settlement import settle_epoch

    dep = Deployment.load(_deployment_file(deployment))
    ledger = _ledger(db)
    try:
        typer.echo(settle_epoch(ledger, dep, epoch, pool_wei, current_epoch=current_epoch).line())
    finally:
        ledger.close()


@ledger_app.command("epoch")
@one_line_errors
def ledger_epoch(epoch: Annotated[int, typer.Option("--epoch")], db: DbOption = None) -> None:
    """Show an epoch's allocation and settlement status."""
    from veriswarm.incentives.errors import LedgerError

    ledger = _ledger(db)
    try:
        alloc = ledger.epoch(epoch)
        if alloc is None:
            raise LedgerError(f"epoch {epoch} is not allocated")
        typer.echo(f"epoch {epoch}: {alloc.status}, root {alloc.root}, total {alloc.total} of pool {alloc.pool} wei, "
                   f"{len(alloc.amounts)} node(s), tx {alloc.tx_hash or '-'}")
        for address, amount in sorted(alloc.amounts.items()):
            typer.echo(f"  {address}: {amount}")
    finally:
        ledger.close()


@ledger_app.command("claim")
@one_line_errors
def ledger_claim(
    epoch: Annotated[int, typer.Option("--epoch")],
    key: Annotated[Path, typer.Option("--key", help="node keystore file (password from VERISWARM_KEY_PASSWORD)")],
    db: DbOption = None,
    deployment: DeploymentOption = None,
) -> None:
    """Claim a node's reward for an epoch with its Merkle proof from the ledger."""
    from veriswarm.incentives.chain import Deployment
    from veriswarm.incentives.settlement import claim
    from veriswarm.keys import load_keystore

    dep = Deployment.load(_deployment_file(deployment))
    private_key = load_keystore(key, _password())
    ledger = _ledger(db)
    try:
        amount, receipt = claim(ledger, dep, epoch, private_key)
        typer.echo(f"claimed {amount} wei for epoch {epoch} in tx {receipt.tx_hash} (gas {receipt.gas_used})")
    finally:
        ledger.close()


@app.command("demo")
@one_line_errors
def demo_cmd(
    prompt: Annotated[str, typer.Option("--prompt")] = "In one sentence, what is a verifiable computation?",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-m")] = 48,
    model_dir: Annotated[Path | None, typer.Option("--model-dir", help="default: SmolLM2 split in 4 shards")] = None,
    serve: Annotated[bool, typer.Option("--serve", help="keep everything running until Ctrl-C")] = False,
) -> None:
    """The main demo: chain + contracts, nodes staking on chain, verifier, OpenAI gateway; a prompt answered,
    audited, recorded in the ledger, settled on chain and claimed."""
    from .demo import run_demo

    run_demo(model_dir or ensure_default_split(), home() / "demo", prompt=prompt, max_new_tokens=max_new_tokens,
             serve=serve)


from .api_cmd import api_app  # noqa: E402
from .dashboard_cmd import dashboard_cmd  # noqa: E402
from .swarm_cmd import swarm_app  # noqa: E402
from .verifier_cmd import verifier_app  # noqa: E402

app.add_typer(api_app, name="api")
app.command("dashboard")(dashboard_cmd)
app.add_typer(verifier_app, name="verifier")
app.add_typer(swarm_app, name="swarm")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
