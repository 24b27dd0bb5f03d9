"""On-chain verification of slice proofs with the ezkl-generated Solidity verifier.

``ezkl.create_evm_verifier`` renders the verifier contract for a slice's vk (one contract per slice:
the vk, and so the committed weights, are baked into it), then tries to download a solc list, which
fails offline: that error is expected and ignored once the ``.sol`` file exists. The contract is
compiled with solc-js (``.tools/bin/solc``, installed by ``deploy/tools.sh``), deployed with web3.py and
called with ``verifyProof(bytes proof, uint256[] instances)``: the instances are the slice's output rows.
The input is bound by the KZG commitment in the proof's first 64 bytes, which a consuming contract
compares with the commitment of the agreed input (:func:`~veriswarm.verifier.zk.proofs.input_commitment`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ezkl
from eth_abi import encode
from eth_utils import keccak
from web3 import Web3
from web3.exceptions import ContractLogicError, Web3RPCError

from veriswarm.errors import ConfigError

from .circuits import SliceCircuit
from .errors import ProofError
from .proofs import SliceProof
from .srs import file_lock

SELECTOR = keccak(text="verifyProof(bytes,uint256[])")[:4]
CONTRACT = "Halo2Verifier"
ENV_TOOLS = "VERISWARM_TOOLS_BIN"


def tool(name: str) -> Path:
    """A contract tool (solc, anvil): $VERISWARM_TOOLS_BIN, then <repo>/.tools/bin, then PATH."""
    candidates = []
    if os.environ.get(ENV_TOOLS):
        candidates.append(Path(os.environ[ENV_TOOLS]) / name)
    candidates.append(Path(__file__).resolve().parents[2] / ".tools" / "bin" / name)
    found = shutil.which(name)
    if found:
        candidates.append(Path(found))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise ConfigError(f"{name} not found (run `bash deploy/tools.sh` to install the contract tools into .tools/)")


def write_verifier(circuit: SliceCircuit) -> Path:
    """Render (once, cached next to the vk) the Solidity verifier of a slice's vk."""
    sol = circuit.vk.parent / "Verifier.sol"
    if sol.is_file():
        return sol
    with file_lock(circuit.vk.parent / ".sol.lock"):
        if sol.is_file():
            return sol
        tmp = sol.with_name(f".Verifier.{os.getpid()}.sol")

        async def render() -> Any:
            return await ezkl.create_evm_verifier(str(circuit.vk), str(circuit.settings), str(tmp),
                                                  str(tmp.with_suffix(".abi")), str(circuit.srs), False)

        # Its own thread and event loop: works whether or not the caller runs an asyncio loop.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            try:
                pool.submit(asyncio.run, render()).result()
            except RuntimeError:
                pass  # after writing the contract it tries to download a solc list (offline: fails)
        if not tmp.is_file() or b"contract " + CONTRACT.encode() not in tmp.read_bytes():
            tmp.unlink(missing_ok=True)
            raise ProofError("ezkl did not write a Solidity verifier")
        os.replace(tmp, sol)
        tmp.with_suffix(".abi").unlink(missing_ok=True)
    return sol


@dataclass(frozen=True)
class CompiledVerifier:
    abi: list[dict[str, Any]]
    bytecode: bytes
    runtime_size: int


def compile_verifier(sol: Path, *, solc: Path | None = None) -> CompiledVerifier:
    """Compile the verifier with solc-js (optimizer on, 1 run: smallest code); cached next to the source."""
    cached = sol.with_suffix(".json")
    if not cached.is_file():
        source = sol.read_text()
        request = {"language": "Solidity", "sources": {sol.name: {"content": source}},
                   "settings": {"optimizer": {"enabled": True, "runs": 1},
                                "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object",
                                                                "evm.deployedBytecode.object"]}}}}
        proc = subprocess.run([str(solc or tool("solc")), "--standard-json"], input=json.dumps(request),
                              capture_output=True, text=True, timeout=600, check=False)
        try:
            out = json.loads(proc.stdout)
        except ValueError:
            raise ProofError(f"solc failed: {(proc.stderr or proc.stdout).strip()[:200]}") from None
        errors = [e.get("formattedMessage", e.get("message", "")) for e in out.get("errors", [])
                  if e.get("severity") == "error"]
        if errors or sol.name not in out.get("contracts", {}):
            raise ProofError(f"solc could not compile the verifier: {(errors or ['no output'])[0].splitlines()[0]}")
        c = out["contracts"][sol.name][CONTRACT]
        data = {"abi": c["abi"], "bytecode": c["evm"]["bytecode"]["object"],
                "runtime_size": len(c["evm"]["deployedBytecode"]["object"]) // 2}
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, cached)
    data = json.loads(cached.read_text())
    return CompiledVerifier(data["abi"], bytes.fromhex(data["bytecode"]), int(data["runtime_size"]))


def calldata(proof: SliceProof) -> bytes:
    """ABI calldata of ``verifyProof(proof, instances)`` for a slice proof."""
    return SELECTOR + encode(["bytes", "uint256[]"], [proof.proof, list(proof.outputs)])


class Anvil:
    """A throwaway local devnet (anvil on a free loopback port) for as long as the ``with`` block lasts."""

    def __init__(self, *, binary: Path | None = None, startup_timeout: float = 30.0) -> None:
        self.binary = binary or tool("anvil")
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.rpc_url = ""

    def __enter__(self) -> Web3:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.rpc_url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen([str(self.binary), "--host", "127.0.0.1", "--port", str(port), "--silent"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        w3 = Web3(Web3.HTTPProvider(self.rpc_url, request_kwargs={"timeout": 60}))
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ConfigError(f"anvil exited with status {self.process.returncode} at start")
            try:
                if w3.is_connected():
                    return w3
            except Exception:  # not up yet
                pass
            time.sleep(0.1)
        self.__exit__(None, None, None)
        raise ConfigError(f"anvil did not answer on {self.rpc_url} within {self.startup_timeout:g}s")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


def deploy_verifier(w3: Web3, compiled: CompiledVerifier, *, sender: str | None = None) -> tuple[str, int]:
    """Deploy the verifier from an unlocked devnet account; return (address, gas used)."""
    sender = sender or w3.eth.accounts[0]
    tx = w3.eth.send_transaction({"from": sender, "data": compiled.bytecode})
    receipt = w3.eth.wait_for_transaction_receipt(tx, timeout=120)
    if receipt["status"] != 1 or not receipt["contractAddress"]:
        raise ProofError("deploying the verifier contract failed")
    return str(receipt["contractAddress"]), int(receipt["gasUsed"])


def call_verifier(w3: Web3, address: str, data: bytes) -> bool:
    """eth_call ``verifyProof``: True when the contract returns true; False when it reverts or returns false."""
    try:
        out = w3.eth.call({"to": Web3.to_checksum_address(address), "data": data})
    except (ContractLogicError, Web3RPCError, ValueError):
        return False
    return len(out) == 32 and int.from_bytes(out, "big") == 1


def verify_on_chain(w3: Web3, address: str, proof: SliceProof, *, sender: str | None = None) -> int:
    """Verify ``proof`` in a transaction on the slice's verifier contract; return the gas used (raises if rejected)."""
    data = calldata(proof)
    if not call_verifier(w3, address, data):
        raise ProofError(f"the on-chain verifier at {address} rejected the proof")
    sender = sender or w3.eth.accounts[0]
    tx = w3.eth.send_transaction({"from": sender, "to": Web3.to_checksum_address(address), "data": data})
    receipt = w3.eth.wait_for_transaction_receipt(tx, timeout=120)
    if receipt["status"] != 1:
        raise ProofError(f"the verification transaction on {address} reverted")
    return int(receipt["gasUsed"])
