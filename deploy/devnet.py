"""A local chain for development: anvil on loopback, the contracts deployed, a deployment file written.

``start_devnet`` starts anvil (private HOME, pruned history, so nothing piles up under ~/.foundry),
deploys Staking then Rewards, registers and activates the verifiers, funds the reward pool and writes
``deployment.json`` (chain id, RPC URL, addresses, ABI paths, parameters and the test accounts' keys).
``devnet_status`` and ``stop_devnet`` read that file. ``serve_swarm`` runs node processes that register
themselves on that chain and answers a prompt through them with a client that discovers them on chain.

Accounts come from anvil's well-known test mnemonic: #0 deployer, #1-#3 verifiers, #4 treasury,
#5 faucet (tops up node keys that register themselves), #6-#9 spare test accounts. Devnet only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from veriswarm.errors import ConfigError
from veriswarm.incentives.abi import artifact
from veriswarm.incentives.chain import STAKING_PARAM_NAMES, Chain, Deployment, KeyAccount
from veriswarm.incentives.errors import ChainError

ANVIL_ENV = "VERISWARM_ANVIL"
TEST_MNEMONIC = "test test test test test test test test test test test junk"
DEFAULT_PORT = 8545
DEPLOYMENT_FILE = "deployment.json"
ETHER = 10**18


class Echo(Protocol):
    def __call__(self, message: str, nl: bool = True) -> None: ...


@dataclass(frozen=True)
class DevnetParams:
    chain_id: int = 31337
    accounts: int = 10
    balance_ether: int = 10_000
    min_stake: int = 1 * ETHER
    min_verifier_stake: int = 10 * ETHER
    challenge_bond: int = ETHER // 10
    challenge_window_s: int = 86_400
    unbonding_delay_s: int = 7 * 86_400
    veto_window_s: int = 2 * 86_400
    jail_duration_s: int = 3 * 86_400
    #: 0 on the devnet so the quorum exists at once; a real deployment waits a day.
    verifier_activation_delay_s: int = 0
    reporter_share_bps: int = 1_000
    equivocation_slash_bps: int = 5_000
    verifiers: int = 3
    verifier_stake: int = 10 * ETHER
    reward_pool: int = 100 * ETHER


def find_anvil() -> Path:
    """anvil from $VERISWARM_ANVIL (authoritative when set), the checkout's .tools/bin (deploy/tools.sh), or PATH."""
    env = os.environ.get(ANVIL_ENV)
    if env:
        if Path(env).is_file() and os.access(env, os.X_OK):
            return Path(env)
        raise ConfigError(f"{ANVIL_ENV}={env} is not an executable anvil; run `bash deploy/tools.sh` to install it")
    candidates = [Path(__file__).resolve().parents[1] / ".tools" / "bin" / "anvil"]
    found = shutil.which("anvil")
    if found:
        candidates.append(Path(found))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise ConfigError(f"anvil not found: run `bash deploy/tools.sh` (installs it into .tools/bin) or set {ANVIL_ENV}")


def test_keys(n: int, mnemonic: str = TEST_MNEMONIC) -> list[bytes]:
    from eth_account.hdaccount import key_from_seed, seed_from_mnemonic

    seed = seed_from_mnemonic(mnemonic, "")
    return [bytes(key_from_seed(seed, f"m/44'/60'/0'/0/{i}")) for i in range(n)]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _pid_is_anvil(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid
    if b"anvil" not in cmdline:
        return False  # the pid was reused by something else
    try:  # a zombie (exited, not yet reaped by its parent) is not a running chain
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def deployment_path(state_dir: Path) -> Path:
    return Path(state_dir) / DEPLOYMENT_FILE


def running_deployment(state_dir: Path) -> Deployment | None:
    """The deployment of a devnet whose anvil process is alive, or None (no file, or a dead chain)."""
    path = deployment_path(state_dir)
    if not path.is_file():
        return None
    dep = Deployment.load(path)
    pid = int(dep.process.get("pid", 0))
    return dep if pid and _pid_is_anvil(pid) else None


def _die_with_parent() -> None:
    """In the child before exec (Linux): get SIGTERM when the process that started us dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start_anvil(state_dir: Path, *, host: str, port: int, params: DevnetParams,
                die_with_parent: bool = False) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    anvil = find_anvil()
    if not _port_free(host, port):
        raise ConfigError(f"port {port} on {host} is already in use (another chain?); pick another with --chain-port")
    home = Path(state_dir) / "anvil-home"
    home.mkdir(parents=True, exist_ok=True)
    log = Path(state_dir) / "anvil.log"
    cmd = [str(anvil), "--host", host, "--port", str(port), "--chain-id", str(params.chain_id),
           "--accounts", str(params.accounts), "--balance", str(params.balance_ether), "--mnemonic", TEST_MNEMONIC,
           "--prune-history"]
    env = {**os.environ, "HOME": str(home), "NO_COLOR": "1"}
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, cwd=str(home),
                                preexec_fn=_die_with_parent if die_with_parent else None)
    url = f"http://{host}:{port}"
    chain = Chain(url, retries=0, timeout_s=2.0)
    deadline = time.monotonic() + 15.0
    while True:
        if proc.poll() is not None:
            raise ChainError(f"anvil exited at start (status {proc.returncode}): {_log_tail(log) or 'no output'}")
        try:
            if chain.chain_id == params.chain_id:
                break
        except ChainError:
            pass
        if time.monotonic() > deadline:
            _terminate(proc.pid)
            raise ChainError(f"anvil did not answer on {url} within 15s: {_log_tail(log)}")
        time.sleep(0.05)
    return proc, {"pid": proc.pid, "host": host, "port": port, "home": str(home), "log": str(log),
                  "anvil": str(anvil), "started_at": time.time()}


def deploy_contracts(chain: Chain, params: DevnetParams, *, rpc_url: str, process: dict[str, Any] | None = None) -> Deployment:
    """Deploy Staking + Rewards with the devnet parameters, activate the verifiers, fund the pool."""
    if params.accounts < params.verifiers + 3:
        raise ConfigError(f"a devnet with {params.verifiers} verifiers needs at least {params.verifiers + 3} accounts")
    keys = test_keys(params.accounts)
    deployer, verifiers = KeyAccount.from_key(keys[0]), [KeyAccount.from_key(k) for k in keys[1:1 + params.verifiers]]
    rest = keys[1 + params.verifiers:]
    treasury, faucet = KeyAccount.from_key(rest[0]), KeyAccount.from_key(rest[1])
    accounts = [KeyAccount.from_key(k) for k in rest[2:]]
    values = [params.min_stake, params.min_verifier_stake, params.challenge_bond, params.challenge_window_s,
              params.unbonding_delay_s, params.veto_window_s, params.jail_duration_s,
              params.verifier_activation_delay_s, params.reporter_share_bps, params.equivocation_slash_bps,
              treasury.address]
    first_block = chain.block_number()
    staking = chain.deploy(deployer.key, "Staking", tuple(values))
    rewards = chain.deploy(deployer.key, "Rewards", staking.address)
    for v in verifiers:
        staking.transact(v.key, "registerVerifier", value=params.verifier_stake)
    if params.verifier_activation_delay_s:
        chain.increase_time(params.verifier_activation_delay_s)
    for v in verifiers:
        staking.transact(deployer.key, "activateVerifier", v.address)
    if params.reward_pool:
        rewards.transact(deployer.key, "fund", value=params.reward_pool)
    return Deployment(chain_id=chain.chain_id, rpc_url=rpc_url, staking=staking.address, rewards=rewards.address,
                      deployed_block=first_block, params=dict(zip(STAKING_PARAM_NAMES, values, strict=True)),
                      abi_paths={n: str(artifact(n).path) for n in ("Staking", "Rewards")},
                      deployer=deployer, treasury=treasury, faucet=faucet, verifiers=verifiers, accounts=accounts,
                      process=process or {})


def start_devnet(state_dir: Path, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 params: DevnetParams | None = None, die_with_parent: bool = False) -> Deployment:
    """Start anvil, deploy, write ``<state_dir>/deployment.json``. One devnet per state folder.
    ``die_with_parent`` (tests) stops anvil when the calling process dies, however it dies."""
    params = params or DevnetParams()
    state_dir = Path(state_dir)
    path = deployment_path(state_dir)
    if path.is_file():
        try:
            live = running_deployment(state_dir)
        except ChainError:
            live = None
        if live is not None:
            raise ConfigError(f"a devnet is already running (anvil pid {live.process.get('pid')}, chain {live.chain_id} "
                              f"at {live.rpc_url}); stop it with `veriswarm devnet down`")
        path.unlink()  # a dead devnet's leftovers
    state_dir.mkdir(parents=True, exist_ok=True)
    proc, process = start_anvil(state_dir, host=host, port=port, params=params, die_with_parent=die_with_parent)
    try:
        url = f"http://{host}:{port}"
        dep = deploy_contracts(Chain(url), params, rpc_url=url, process=process)
        dep.save(path)
    except BaseException:
        _terminate(proc.pid)
        raise
    return dep


def _terminate(pid: int, timeout_s: float = 5.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
            if done:
                return
        except ChildProcessError:
            if not _pid_is_anvil(pid):
                return
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def stop_devnet(state_dir: Path) -> str:
    """Stop the devnet's anvil and remove its state. Idempotent; returns a one-line summary."""
    path = deployment_path(state_dir)
    if not path.is_file():
        return f"no devnet is running (no {path})"
    try:
        dep = Deployment.load(path)
        pid = int(dep.process.get("pid", 0))
        home = dep.process.get("home")
    except ChainError:
        pid, home = 0, None
    alive = bool(pid) and _pid_is_anvil(pid)
    if alive:
        _terminate(pid)
    path.unlink(missing_ok=True)
    if home:
        shutil.rmtree(home, ignore_errors=True)
    return f"devnet stopped (anvil pid {pid})" if alive else f"devnet chain (pid {pid or '?'}) was not running; removed its state"


def devnet_status(state_dir: Path) -> list[str]:
    """Lines describing the running devnet; ChainError/ConfigError (one line) when none or dead."""
    path = deployment_path(state_dir)
    if not path.is_file():
        raise ConfigError(f"no devnet is running (no {path}); start one with `veriswarm devnet up`")
    dep = Deployment.load(path)
    pid = int(dep.process.get("pid", 0))
    if not pid or not _pid_is_anvil(pid):
        raise ChainError(f"the devnet chain is dead (anvil pid {pid} is gone; log {dep.process.get('log')}); "
                         "`veriswarm devnet down` cleans up")
    chain = Chain(dep.rpc_url, retries=1, timeout_s=3.0)
    staking, rewards = dep.staking_contract(chain), dep.rewards_contract(chain)
    block = chain.block_number()
    return [f"chain {dep.chain_id} at {dep.rpc_url} (anvil pid {pid}), block {block}",
            f"Staking {dep.staking}  Rewards {dep.rewards}",
            f"verifiers active: {staking.call('activeVerifierCount')}  reward pool available: "
            f"{rewards.call('availablePool') / ETHER:g} ETH  last settled epoch: {rewards.call('lastSettledEpoch')}",
            f"deployment file: {path}"]


# ---- a swarm on the devnet --------------------------------------------------------------------------
def serve_swarm(deployment_file: Path, model_dir: Path, *, workdir: Path, replicas: int, base_port: int,
                prompt: str | None, wait: bool, echo: Echo, max_new_tokens: int = 64) -> None:
    """Start node processes that register on the devnet, optionally answer a prompt through them with a
    client that finds them in the on-chain registry, and keep serving until Ctrl-C when ``wait``."""
    from veriswarm.client import Client
    from veriswarm.client.chain_registry import ChainRegistry
    from veriswarm.deploy.local import LocalSwarm
    from veriswarm.sinks import MemorySink

    dep = Deployment.load(deployment_file)
    swarm = LocalSwarm(model_dir=model_dir, workdir=workdir, replicas=replicas, base_port=base_port,
                       extra_args=["--deployment", str(Path(deployment_file).resolve())])
    echo(f"starting {replicas} node(s) per shard from {model_dir}; they register on chain {dep.chain_id} ...")
    t0 = time.perf_counter()
    with swarm:
        echo(f"swarm up in {time.perf_counter() - t0:.1f}s:")
        staking = dep.staking_contract()
        for node in swarm.nodes:
            rec = staking.call("getNode", node.address)
            echo(f"  shard {node.shard}  {node.url}  key {node.address}  stake {rec['stake'] / ETHER:g} ETH  "
                 f"log {node.log_file}")
        if prompt:
            sink = MemorySink()
            registry = ChainRegistry(dep.rpc_url, dep.staking)
            with Client(model_dir, registry, sink=sink, domain=dep.domain) as client:
                echo(f"\nmanifest {client.manifest_hash} (peers from the on-chain registry)\n> {prompt}\n")
                started = time.perf_counter()
                for piece in client.stream(messages=[{"role": "user", "content": prompt}], max_new_tokens=max_new_tokens):
                    echo(piece, nl=False)
                elapsed = time.perf_counter() - started
            per_node = Counter(r.node_address for r in sink.records)
            echo(f"\n\n{len(sink.records)} hop receipts checked (EIP-712 signature under chain {dep.chain_id} / "
                 f"Staking {dep.staking}) in {elapsed:.2f}s:")
            for address, count in per_node.items():
                echo(f"  {address}: {count} receipts")
        if wait:
            echo("\nserving; press Ctrl-C to stop")
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass
        echo("stopping nodes")
