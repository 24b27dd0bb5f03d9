"""The main demo: every part of veriswarm running for real on this machine, end to end.

chain (anvil) + contracts → node processes that register and stake on chain → verifier service → OpenAI
gateway (finds the nodes in the on-chain registry, sends checked hops to the verifier) → a prompt answered
through the OpenAI endpoint → the verifier's audit → the ledger (reputation, epoch allocation) → the epoch
settled on chain by the verifier quorum → a node claims its reward. Everything is stopped at the end
(or on Ctrl-C with --serve).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import typer

ETHER = 10**18


def _post(url: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else b""
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=300) as resp:
        return json.loads(resp.read())


def _wait_http(url: str, proc: subprocess.Popen[bytes] | None, log: Path | None, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                tail = log.read_text()[-2000:] if log else ""
                raise RuntimeError(f"process exited during start-up:\n{tail}") from None
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f}s")


def _dashboard_line(gurl: str) -> str:
    """What the dashboard shows now, in one line (the page at /dashboard reads the same JSON)."""
    state = json.loads(urllib.request.urlopen(f"{gurl}/dashboard/state.json", timeout=30).read())
    nodes = [n for s in state["shards"] for n in s["nodes"]]
    staked = sum(1 for n in nodes if (n.get("stake") or {}).get("stake_wei"))
    verdicts = len(state["verifier"].get("verdicts", []))
    return (f"[dashboard] {sum(s['coverage'] != 'none' for s in state['shards'])}/{len(state['shards'])} shards "
            f"covered, {sum(n['state'] == 'ok' for n in nodes)} node(s) live, {staked} with stake on chain, "
            f"{verdicts} verdict(s), {len(state['ledger'].get('epochs', []))} epoch(s), "
            f"{state['throughput']['requests']} request(s) at {state['throughput']['tokens_per_s']} tokens/s")


class _VerifierThread:
    """The verifier service on its own event loop in a thread of this process."""

    def __init__(self, app: Any, port: int) -> None:
        from aiohttp import web

        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app)
        self.port = port
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result()

    async def _start(self) -> None:
        from aiohttp import web

        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


def run_demo(model_dir: Path, workdir: Path, *, prompt: str, max_new_tokens: int, serve: bool) -> None:
    from veriswarm.deploy.devnet import deployment_path, free_port, start_devnet, stop_devnet
    from veriswarm.deploy.local import DEVNET_PASSWORD, LocalSwarm
    from veriswarm.incentives.ledger import Ledger
    from veriswarm.incentives.settlement import claim, settle_epoch
    from veriswarm.keys import load_keystore
    from veriswarm.manifest import ModelDir
    from veriswarm.protocol import PROTOCOL_VERSION, VERSION_HEADER
    from veriswarm.verifier.core import Verifier, VerifierConfig
    from veriswarm.verifier.service import make_app
    from veriswarm.verifier.slashing import ChainSlasher

    echo = typer.echo
    if workdir.exists():
        shutil.rmtree(workdir)  # a demo starts from a clean slate: fresh chain, keys, ledger
    workdir.mkdir(parents=True)
    t0 = time.perf_counter()
    state = workdir / "devnet"
    dep = start_devnet(state, port=free_port(), die_with_parent=True)
    dep_file = deployment_path(state)
    echo(f"[chain]    anvil chain {dep.chain_id} at {dep.rpc_url}; Staking {dep.staking}, Rewards {dep.rewards}, "
         f"{len(dep.verifiers)} staked verifiers")
    gateway: subprocess.Popen[bytes] | None = None
    verifier_thread: _VerifierThread | None = None
    swarm = LocalSwarm(model_dir=model_dir, workdir=workdir / "nodes", extra_args=["--deployment", str(dep_file)])
    try:
        swarm.start()
        staking = dep.staking_contract()
        for node in swarm.nodes:
            rec = staking.call("getNode", node.address)
            echo(f"[node]     shard {node.shard} at {node.url}, key {node.address}, stake {rec['stake'] / ETHER:g} ETH "
                 "(registered on chain)")

        ledger = Ledger(f"sqlite:///{(workdir / 'ledger.db').resolve()}")
        ledger.migrate()
        verifier = Verifier(ModelDir.open(model_dir), ledger=ledger, domain=dep.domain,
                            config=VerifierConfig(address=dep.verifiers[0].address, audit_rate=1.0, idle_s=3600),
                            slasher=ChainSlasher(dep, dep.verifiers[0].key))
        vport = free_port()
        verifier_thread = _VerifierThread(make_app(verifier=verifier), vport)
        vurl = f"http://127.0.0.1:{vport}"
        echo(f"[verifier] {vurl} (audit rate 1.0 for the demo; beacon commitment {verifier.beacon.commitment[:18]}…)")

        gport = free_port()
        glog = workdir / "gateway.log"
        with glog.open("wb") as fh:
            gateway = subprocess.Popen([sys.executable, "-m", "veriswarm.cli", "api", "serve", "--model-dir",
                                        str(model_dir), "--deployment", str(dep_file), "--port", str(gport),
                                        "--verifier", vurl, "--ledger", ledger.url], stdout=fh, stderr=subprocess.STDOUT)
        gurl = f"http://127.0.0.1:{gport}"
        _wait_http(f"{gurl}/health", gateway, glog)
        echo(f"[gateway]  OpenAI-compatible API at {gurl}/v1 (nodes from the on-chain registry); up in "
             f"{time.perf_counter() - t0:.1f}s")
        echo(f"[gateway]  live swarm dashboard at {gurl}/dashboard\n")

        models = json.loads(urllib.request.urlopen(f"{gurl}/v1/models").read())["data"]
        echo(f"> {prompt}")
        started = time.perf_counter()
        answer = _post(f"{gurl}/v1/chat/completions", {"model": models[0]["id"], "max_tokens": max_new_tokens,
                                                         "temperature": 0,
                                                         "messages": [{"role": "user", "content": prompt}]})
        elapsed = time.perf_counter() - started
        ext = answer["veriswarm"]
        echo(f"{answer['choices'][0]['message']['content']}\n")
        echo(f"[answer]   {answer['usage']['completion_tokens']} tokens in {elapsed:.2f}s; manifest "
             f"{ext['manifest_hash'][:18]}…; route " + " → ".join(h["address"][:10] + "…" for h in ext["route"]))
        echo(f"[receipts] {len(ext['receipt_ids'])} signed hop receipts, each checked by the gateway's client")

        deadline = time.monotonic() + 60
        while verifier.stats["received"] < len(ext["receipt_ids"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        audited = _post(f"{vurl}/v1/audit", headers={VERSION_HEADER: PROTOCOL_VERSION})["audited"]
        for line in audited:
            echo(f"[audit]    {line}")

        epoch = ledger.receipt(ext["receipt_ids"][0])["epoch"]
        for s in ledger.nodes():
            echo(f"[ledger]   {s.address}: reputation {s.reputation:.3f}, {s.audits_passed} audits passed, {s.status}")
        rewards = dep.rewards_contract()
        assert dep.faucet is not None
        rewards.transact(dep.faucet.key, "fund", value=ETHER)
        result = settle_epoch(ledger, dep, epoch, pool=ETHER // 10)
        alloc = ledger.epoch(epoch)
        assert alloc is not None
        echo(f"[settle]   {result.line()} (signed by the verifier quorum)")
        for address, amount in alloc.amounts.items():
            echo(f"[reward]   {address}: {amount / ETHER:.6f} ETH allocated")
        first = swarm.nodes[0]
        key = load_keystore(first.key_file, DEVNET_PASSWORD)
        before = dep.chain().balance(first.address)
        paid, receipt = claim(ledger, dep, epoch, key)
        echo(f"[claim]    {first.address} claimed {paid / ETHER:.6f} ETH with a Merkle proof "
             f"(balance {before / ETHER:.4f} → {dep.chain().balance(first.address) / ETHER:.4f} ETH, gas paid)")
        echo(_dashboard_line(gurl))
        if serve:
            echo(f"\nserving: gateway {gurl}/v1, dashboard {gurl}/dashboard, verifier {vurl}, chain {dep.rpc_url}; "
                 "press Ctrl-C to stop")
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass
    finally:
        echo("\nstopping gateway, verifier, nodes and chain")
        if gateway is not None and gateway.poll() is None:
            gateway.send_signal(signal.SIGINT)
            try:
                gateway.wait(timeout=15)
            except subprocess.TimeoutExpired:
                gateway.kill()
        if verifier_thread is not None:
            verifier_thread.stop()
        swarm.stop()
        stop_devnet(state)
