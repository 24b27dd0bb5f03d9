"""The chain side in Python: a JSON-RPC client for the veriswarm contracts, and the deployment file.

* :class:`Chain` talks plain JSON-RPC over one keep-alive HTTP connection per thread (the ABI work is
  eth-abi / eth-utils, web3's own libraries; web3's provider stack is skipped because it is the
  bottleneck). Transactions are EIP-155 legacy transactions signed with coincurve; nonces are tracked
  locally per sender and re-read from the chain after any error; transient RPC failures are retried with
  backoff (a re-sent raw transaction has the same hash, so a retry never sends twice); an unreachable
  chain is one :class:`ChainError` line, and a revert is a :class:`ContractRevert` naming the contract's
  custom error (``AlreadyClaimed``, ``EvidenceAlreadyUsed``, ...).
* :class:`Deployment` is the file ``veriswarm devnet up`` writes and nodes, verifiers, the settlement job
  and the SDK read: chain id, RPC URL, contract addresses and ABI paths, parameters, and (devnet only) the
  test accounts' keys.
* EIP-712 helpers for the quorum-signed types (Verdict, VerifierFault, Veto, Settlement) and node registration.
* Slashing helpers: nodes (``slash_equivocation``, ``slash_with_verdict``) and verifiers (``slash_verifier``).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import coincurve
import requests
import rlp
from eth_utils import keccak, to_checksum_address

from veriswarm.receipts import Receipt, ReceiptDomain, address_of

from .abi import ContractABI, DecodedError, artifact, contract_abi, decode_revert
from .errors import ChainError

DEPLOYMENT_FORMAT = "veriswarm-deployment/1"
STAKING_PARAM_NAMES = ("minStake", "minVerifierStake", "challengeBond", "challengeWindow", "unbondingDelay",
                       "vetoWindow", "jailDuration", "verifierActivationDelay", "reporterShareBps",
                       "equivocationSlashBps", "treasury")
NODE_STATUS = ("none", "active", "unbonding")
SLASH_STATUS = ("none", "pending", "executed", "vetoed")
VERDICT_TYPEHASH = keccak(text="Verdict(address node,bytes32 evidenceHash,uint16 slashBps,uint64 deadline)")
VERIFIER_FAULT_TYPEHASH = keccak(
    text="VerifierFault(address verifier,uint8 kind,bytes32 evidenceHash,uint16 slashBps,uint64 deadline)")
VETO_TYPEHASH = keccak(text="Veto(uint256 slashId,bytes32 evidenceId)")
SETTLEMENT_TYPEHASH = keccak(text="Settlement(uint64 epoch,bytes32 root,uint256 total)")
#: Gas money a node keeps on top of its stake to pay for its own registration transactions.
REGISTRATION_GAS_RESERVE = 10**16


class ContractRevert(ChainError):
    """A call or transaction reverted; ``error`` is the decoded custom error when known."""

    def __init__(self, label: str, error: DecodedError | None, raw: bytes = b"", reason: str = "") -> None:
        self.label = label
        self.error = error
        self.raw = raw
        what = str(error) if error else (reason or ("0x" + raw.hex() if raw else "no reason given"))
        super().__init__(f"{label} reverted: {what}")

    @property
    def name(self) -> str | None:
        return self.error.name if self.error else None


class RpcError(ChainError):
    """The node answered a JSON-RPC error."""

    def __init__(self, method: str, code: int, message: str, data: bytes | None) -> None:
        super().__init__(f"{method}: {message} (code {code})")
        self.method = method
        self.code = code
        self.message = message
        self.data = data


def _hex(n: int) -> str:
    return hex(n)


def _b(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    return bytes.fromhex(value[2:] if value.startswith("0x") else value)


def as_key(value: str | bytes) -> bytes:
    """A private key given as 32 bytes or 0x-hex, as bytes."""
    raw = _b(value)
    if len(raw) != 32:
        raise ChainError("a private key must be 32 bytes")
    return raw


@dataclass(frozen=True)
class TxReceipt:
    tx_hash: str
    block_number: int
    gas_used: int
    status: int
    contract_address: str | None
    logs: list[dict[str, Any]]


class Chain:
    """A JSON-RPC connection to one chain. Thread-safe; cheap to create (nothing is sent until used)."""

    def __init__(self, rpc_url: str, *, timeout_s: float = 10.0, retries: int = 3, backoff_s: float = 0.15,
                 receipt_timeout_s: float = 60.0) -> None:
        self.rpc_url = rpc_url
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.receipt_timeout_s = receipt_timeout_s
        self._local = threading.local()
        self._lock = threading.RLock()
        self._nonces: dict[str, int] = {}
        self._gas_price: int | None = None
        self._chain_id: int | None = None
        self._signers: dict[bytes, coincurve.PrivateKey] = {}
        self._ids = 0

    # ---- transport --------------------------------------------------------------------------
    def _session(self) -> requests.Session:
        s: requests.Session | None = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            self._local.session = s
        return s

    def rpc(self, method: str, *params: Any) -> Any:
        """One JSON-RPC call; transport failures are retried with backoff, then one clear ChainError."""
        self._ids += 1
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": self._ids, "method": method, "params": list(params)}
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * (3 ** (attempt - 1)))
            try:
                resp = self._session().post(self.rpc_url, json=body, timeout=self.timeout_s)
            except requests.ConnectionError as exc:
                last = "connection refused" if "refused" in str(exc).lower() else f"connection failed ({type(exc).__name__})"
                self._local.session = None
                continue
            except requests.Timeout:
                last = f"no answer within {self.timeout_s:g}s"
                self._local.session = None
                continue
            except requests.RequestException as exc:
                raise ChainError(f"chain at {self.rpc_url}: {type(exc).__name__}: {exc}") from None
            if resp.status_code in (429, 502, 503, 504):
                last = f"HTTP {resp.status_code}"
                continue
            try:
                payload = resp.json()
            except ValueError:
                payload = None
            if not isinstance(payload, dict):
                raise ChainError(f"chain at {self.rpc_url} answered HTTP {resp.status_code} without JSON-RPC")
            if "error" in payload and payload["error"] is not None:
                err = payload["error"]
                data = err.get("data")
                if isinstance(data, dict):
                    data = data.get("data")
                raw = _b(data) if isinstance(data, str) and data.startswith("0x") else None
                raise RpcError(method, int(err.get("code", 0)), str(err.get("message", "")), raw)
            return payload.get("result")
        raise ChainError(f"chain unreachable at {self.rpc_url}: {last} after {self.retries + 1} attempts "
                         "(is the devnet up? try `veriswarm devnet status`)")

    # ---- reads ------------------------------------------------------------------------------
    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self.rpc("eth_chainId"), 16)
        return self._chain_id

    def block_number(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    def timestamp(self) -> int:
        """Timestamp of the latest block (what the contracts see as ``block.timestamp`` for a call)."""
        return int(self.rpc("eth_getBlockByNumber", "latest", False)["timestamp"], 16)

    def balance(self, address: str) -> int:
        return int(self.rpc("eth_getBalance", to_checksum_address(address), "latest"), 16)

    def code(self, address: str) -> bytes:
        return _b(self.rpc("eth_getCode", to_checksum_address(address), "latest"))

    def call(self, to: str, data: bytes, *, sender: str | None = None, value: int = 0, block: str = "latest",
             label: str = "call") -> bytes:
        tx: dict[str, Any] = {"to": to_checksum_address(to), "data": "0x" + data.hex()}
        if sender:
            tx["from"] = to_checksum_address(sender)
        if value:
            tx["value"] = _hex(value)
        attempt = 0
        while True:
            try:
                return _b(self.rpc("eth_call", tx, block))
            except RpcError as exc:
                # anvil (seen with 1.7.1) can answer a call at "latest" with BlockOutOfRangeError when a block
                # is mined during it (cf. foundry-rs/foundry#10709): the same call a moment later is fine.
                if "BlockOutOfRange" in exc.message and block in ("latest", "pending") and attempt < 3:
                    attempt += 1
                    time.sleep(0.02 * attempt)
                    continue
                raise self._revert(label, exc) from None

    def logs(self, address: str, topics: Sequence[str | None], from_block: int = 0) -> list[dict[str, Any]]:
        return list(self.rpc("eth_getLogs", {"address": to_checksum_address(address), "fromBlock": _hex(from_block),
                                             "toBlock": "latest", "topics": list(topics)}))

    def _revert(self, label: str, exc: RpcError) -> ChainError:
        if exc.data is not None or "revert" in exc.message.lower():
            data = exc.data or b""
            return ContractRevert(label, decode_revert(data), data, exc.message)
        return ChainError(f"{label}: {exc}")

    # ---- transactions -------------------------------------------------------------------------
    def _signer(self, key: bytes) -> coincurve.PrivateKey:
        pk = self._signers.get(key)
        if pk is None:
            pk = self._signers[key] = coincurve.PrivateKey(key)
        return pk

    def _sign(self, key: bytes, nonce: int, gas_price: int, gas: int, to: str | None, value: int,
              data: bytes) -> tuple[bytes, str]:
        to_b = _b(to) if to else b""
        cid = self.chain_id
        digest = keccak(rlp.encode([nonce, gas_price, gas, to_b, value, data, cid, 0, 0]))
        sig = self._signer(key).sign_recoverable(digest, hasher=None)
        r, s, rec = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64]
        raw = rlp.encode([nonce, gas_price, gas, to_b, value, data, rec + 35 + 2 * cid, r, s])
        return raw, "0x" + keccak(raw).hex()

    def _next_nonce(self, sender: str) -> int:
        if sender not in self._nonces:
            self._nonces[sender] = int(self.rpc("eth_getTransactionCount", sender, "pending"), 16)
        return self._nonces[sender]

    def reset_nonces(self) -> None:
        """Forget tracked nonces (after evm_revert, or when another process shares a key)."""
        with self._lock:
            self._nonces.clear()

    def gas_price(self, refresh: bool = False) -> int:
        if self._gas_price is None or refresh:
            self._gas_price = int(self.rpc("eth_gasPrice"), 16)
        return self._gas_price

    def estimate_gas(self, sender: str, to: str | None, data: bytes, value: int = 0, label: str = "transaction") -> int:
        tx: dict[str, Any] = {"from": sender, "data": "0x" + data.hex(), "value": _hex(value)}
        if to:
            tx["to"] = to_checksum_address(to)
        try:
            return int(self.rpc("eth_estimateGas", tx), 16)
        except RpcError as exc:
            if "insufficient funds" in exc.message.lower():
                raise ChainError(f"{label}: {sender} has insufficient funds for value {value} wei plus gas") from None
            raise self._revert(label, exc) from None

    def send(self, key: str | bytes, to: str | None, data: bytes = b"", *, value: int = 0, gas: int | None = None,
             wait: bool = True, label: str = "transaction") -> TxReceipt | str:
        """Sign and send a transaction; wait for its receipt (default) or return its hash.

        Without ``gas`` the transaction is first estimated, so a revert is reported (decoded) before anything
        is sent. A mined transaction that reverted raises :class:`ContractRevert` as well.
        """
        key = as_key(key)
        sender = address_of(key)
        if gas is None:
            gas = int(self.estimate_gas(sender, to, data, value, label) * 1.2) + 5_000
        tx_hash = ""
        for attempt in range(6):
            if attempt:
                time.sleep(0.05 * attempt)
            with self._lock:
                nonce = self._next_nonce(sender)
                raw, tx_hash = self._sign(key, nonce, self.gas_price(), gas, to, value, data)
                try:
                    self.rpc("eth_sendRawTransaction", "0x" + raw.hex())
                    self._nonces[sender] = nonce + 1
                    break
                except RpcError as exc:
                    self._nonces.pop(sender, None)  # resync from the chain on the next attempt
                    msg = exc.message.lower()
                    if "already known" in msg or "already imported" in msg or self._known(tx_hash):
                        break  # an earlier attempt of this very transaction got through
                    if "nonce" in msg or "replacement" in msg:
                        continue  # another process used this nonce: re-read and re-sign
                    if "fee" in msg or "underpriced" in msg or "gas price" in msg:
                        self.gas_price(refresh=True)
                        continue
                    if "insufficient funds" in msg:
                        raise ChainError(f"{label}: {sender} has insufficient funds (value {value} wei + gas)") from None
                    raise self._revert(label, exc) from None
                except ChainError:
                    self._nonces.pop(sender, None)
                    raise
        else:
            raise ChainError(f"{label}: could not send from {sender} after 6 attempts (nonce/fee conflicts)")
        if not wait:
            return tx_hash
        receipt = self.wait(tx_hash, sender=sender)
        if receipt.status != 1:
            raise self._replay_revert(label, sender, to, data, value, receipt)
        return receipt

    def _known(self, tx_hash: str) -> bool:
        try:
            return self.rpc("eth_getTransactionByHash", tx_hash) is not None
        except ChainError:
            return False

    def _replay_revert(self, label: str, sender: str, to: str | None, data: bytes, value: int,
                       receipt: TxReceipt) -> ChainError:
        """A mined transaction failed: re-run it as a call to get the reason. A reverted transaction leaves the
        contracts' state as it was, so the state at its own block is the state it ran on (unless another
        transaction in that block changed it; the parent block is tried next, where history is kept)."""
        if to is None:
            return ContractRevert(label, None, reason=f"deployment failed in tx {receipt.tx_hash}")
        for block in (receipt.block_number, receipt.block_number - 1):
            try:
                self.call(to, data, sender=sender, value=value, block=_hex(max(block, 0)), label=label)
            except ContractRevert as exc:
                return exc
            except ChainError:
                continue
        return ContractRevert(label, None, reason=f"transaction {receipt.tx_hash} failed (out of gas or reason unavailable)")

    def wait(self, tx_hash: str, *, sender: str | None = None, timeout_s: float | None = None) -> TxReceipt:
        deadline = time.monotonic() + (timeout_s or self.receipt_timeout_s)
        delay = 0.002
        while True:
            r = self.rpc("eth_getTransactionReceipt", tx_hash)
            if r is not None:
                return TxReceipt(tx_hash=tx_hash, block_number=int(r["blockNumber"], 16), gas_used=int(r["gasUsed"], 16),
                                 status=int(r["status"], 16), contract_address=r.get("contractAddress"),
                                 logs=list(r.get("logs") or []))
            if time.monotonic() > deadline:
                if sender:
                    with self._lock:
                        self._nonces.pop(sender, None)
                raise ChainError(f"transaction {tx_hash} was not mined within {timeout_s or self.receipt_timeout_s:g}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def transfer(self, key: str | bytes, to: str, value: int) -> TxReceipt:
        result = self.send(key, to_checksum_address(to), b"", value=value, gas=21_000, label=f"transfer to {to}")
        assert isinstance(result, TxReceipt)
        return result

    def deploy(self, key: str | bytes, name: str, *args: Any) -> Contract:
        art = artifact(name)
        data = art.bytecode + contract_abi(name).encode_constructor(args)
        receipt = self.send(key, None, data, label=f"deploy {name}")
        assert isinstance(receipt, TxReceipt) and receipt.contract_address
        return self.contract(name, receipt.contract_address)

    def contract(self, name: str, address: str) -> Contract:
        return Contract(self, name, to_checksum_address(address))

    # ---- devnet (anvil) helpers -----------------------------------------------------------------
    def snapshot(self) -> str:
        return str(self.rpc("evm_snapshot"))

    def revert(self, snapshot_id: str) -> None:
        if not self.rpc("evm_revert", snapshot_id):
            raise ChainError(f"evm_revert({snapshot_id}) failed")
        self.reset_nonces()

    def increase_time(self, seconds: int) -> None:
        self.rpc("evm_increaseTime", seconds)
        self.rpc("evm_mine")


class Contract:
    """A contract at an address on a chain: ``call`` (eth_call), ``transact`` (signed tx), ``events``."""

    def __init__(self, chain: Chain, name: str, address: str) -> None:
        self.chain = chain
        self.name = name
        self.address = address
        self.abi: ContractABI = contract_abi(name)

    def calldata(self, fn: str, *args: Any) -> bytes:
        return self.abi.function(fn).encode(args)

    def call(self, fn: str, *args: Any, sender: str | None = None, block: str = "latest") -> Any:
        f = self.abi.function(fn)
        out = self.chain.call(self.address, f.encode(args), sender=sender, block=block, label=f"{self.name}.{fn}")
        try:
            return f.decode(out)
        except Exception as exc:  # eth-abi raises several types on short or malformed data
            where = "no contract there?" if not out else f"{type(exc).__name__}"
            raise ChainError(f"{self.name}.{fn} at {self.address} returned undecodable data ({where})") from None

    def transact(self, key: str | bytes, fn: str, *args: Any, value: int = 0, gas: int | None = None) -> TxReceipt:
        f = self.abi.function(fn)
        result = self.chain.send(key, self.address, f.encode(args), value=value, gas=gas, label=f"{self.name}.{fn}")
        assert isinstance(result, TxReceipt)
        return result

    def events(self, receipt: TxReceipt, name: str | None = None) -> list[dict[str, Any]]:
        """Decoded events this contract emitted in ``receipt`` (each dict has ``event`` = its name)."""
        out = []
        for log in receipt.logs:
            if log["address"].lower() != self.address.lower():
                continue
            decoded = self.abi.decode_log([_b(t) for t in log["topics"]], _b(log["data"]))
            if decoded and (name is None or decoded[0] == name):
                out.append({"event": decoded[0], **decoded[1]})
        return out

    def past_events(self, name: str, *indexed: str | None, from_block: int = 0) -> list[dict[str, Any]]:
        ev = self.abi.events[name]
        logs = self.chain.logs(self.address, ["0x" + ev.topic.hex(), *indexed], from_block)
        out = []
        for log in logs:
            decoded = self.abi.decode_log([_b(t) for t in log["topics"]], _b(log["data"]))
            if decoded:
                out.append({"event": decoded[0], **decoded[1], "tx_hash": log["transactionHash"],
                            "block_number": int(log["blockNumber"], 16)})
        return out


# ---- EIP-712 ----------------------------------------------------------------------------------------
def typed_digest(chain_id: int, verifying_contract: str, struct_hash: bytes) -> bytes:
    return keccak(b"\x19\x01" + ReceiptDomain(chain_id, verifying_contract).separator() + struct_hash)


def verdict_digest(chain_id: int, staking: str, node: str, evidence_hash: bytes, slash_bps: int, deadline: int) -> bytes:
    struct = keccak(VERDICT_TYPEHASH + bytes(12) + _b(node) + evidence_hash + slash_bps.to_bytes(32, "big")
                    + deadline.to_bytes(32, "big"))
    return typed_digest(chain_id, staking, struct)


def verifier_fault_digest(chain_id: int, staking: str, verifier: str, kind: int, evidence_hash: bytes, slash_bps: int,
                          deadline: int) -> bytes:
    """EIP-712 digest of ``VerifierFault`` (Staking domain): what the *other* verifiers sign to slash ``verifier``."""
    struct = keccak(VERIFIER_FAULT_TYPEHASH + bytes(12) + _b(verifier) + int(kind).to_bytes(32, "big") + evidence_hash
                    + slash_bps.to_bytes(32, "big") + deadline.to_bytes(32, "big"))
    return typed_digest(chain_id, staking, struct)


def veto_digest(chain_id: int, staking: str, slash_id: int, evidence_id: bytes) -> bytes:
    return typed_digest(chain_id, staking, keccak(VETO_TYPEHASH + slash_id.to_bytes(32, "big") + evidence_id))


def settlement_digest(chain_id: int, rewards: str, epoch: int, root: bytes, total: int) -> bytes:
    struct = keccak(SETTLEMENT_TYPEHASH + epoch.to_bytes(32, "big") + root + total.to_bytes(32, "big"))
    return typed_digest(chain_id, rewards, struct)


def sign_digest(key: str | bytes, digest: bytes) -> bytes:
    """65-byte r‖s‖v (v ∈ {27, 28}, low s) as the contracts' ECDSA expects."""
    sig = coincurve.PrivateKey(as_key(key)).sign_recoverable(digest, hasher=None)
    return sig[:64] + bytes([sig[64] + 27])


def quorum_signatures(digest: bytes, keys: Sequence[str | bytes]) -> list[bytes]:
    """Signatures of ``digest`` by ``keys``, sorted by signer address ascending (checkQuorum's rule)."""
    signed = sorted(((int(address_of(as_key(k)), 16), sign_digest(k, digest)) for k in keys), key=lambda t: t[0])
    for (a, _), (b, _) in zip(signed, signed[1:], strict=False):
        if a == b:
            raise ChainError("the same verifier key was given twice")
    return [s for _, s in signed]


def receipt_tuple(r: Receipt) -> tuple[Any, ...]:
    """A receipt as the contracts' ``Receipt`` struct (ABI tuple)."""
    return (_b(r.manifest_hash), r.shard_index, _b(r.session_id), r.step, r.start_pos, r.num_tokens, _b(r.input_hash),
            _b(r.context_hash), _b(r.output_hash), _b(r.request_nonce), r.timestamp_ms)


# ---- deployment file --------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeyAccount:
    address: str
    key: str  # 0x-hex private key (devnet test accounts only: never put real keys in a deployment file)

    @classmethod
    def from_key(cls, key: str | bytes) -> KeyAccount:
        raw = as_key(key)
        return cls(address_of(raw), "0x" + raw.hex())


@dataclass(frozen=True)
class Deployment:
    chain_id: int
    rpc_url: str
    staking: str
    rewards: str
    deployed_block: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    abi_paths: dict[str, str] = field(default_factory=dict)
    deployer: KeyAccount | None = None
    treasury: KeyAccount | None = None
    faucet: KeyAccount | None = None  # devnet: funds node keys that register themselves
    verifiers: list[KeyAccount] = field(default_factory=list)
    accounts: list[KeyAccount] = field(default_factory=list)  # further funded test accounts
    process: dict[str, Any] = field(default_factory=dict)  # devnet: the anvil process (pid, port, home, log)

    @property
    def domain(self) -> ReceiptDomain:
        """The EIP-712 domain nodes sign receipts under on this deployment."""
        return ReceiptDomain(self.chain_id, self.staking.lower())

    def chain(self, **kwargs: Any) -> Chain:
        return Chain(self.rpc_url, **kwargs)

    def staking_contract(self, chain: Chain | None = None) -> Contract:
        return (chain or self.chain()).contract("Staking", self.staking)

    def rewards_contract(self, chain: Chain | None = None) -> Contract:
        return (chain or self.chain()).contract("Rewards", self.rewards)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data = {"format": DEPLOYMENT_FORMAT, **data}
        data["contracts"] = {"staking": {"address": self.staking, "abi": self.abi_paths.get("Staking", "")},
                             "rewards": {"address": self.rewards, "abi": self.abi_paths.get("Rewards", "")}}
        for k in ("staking", "rewards", "abi_paths"):
            data.pop(k)
        return data

    def save(self, path: Path) -> None:
        """Write atomically (a reader never sees half a file), mode 0600 (it holds devnet keys)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(self.to_json(), fh, indent=1)
        os.replace(tmp, path)

    @classmethod
    def from_json(cls, data: Any, source: str = "deployment") -> Deployment:
        if not isinstance(data, dict) or data.get("format") != DEPLOYMENT_FORMAT:
            raise ChainError(f"{source} is not a {DEPLOYMENT_FORMAT} file")
        try:
            def acct(v: Any) -> KeyAccount | None:
                return KeyAccount(to_checksum_address(v["address"]), v["key"]) if v else None

            contracts = data["contracts"]
            return cls(chain_id=int(data["chain_id"]), rpc_url=str(data["rpc_url"]),
                       staking=to_checksum_address(contracts["staking"]["address"]),
                       rewards=to_checksum_address(contracts["rewards"]["address"]),
                       deployed_block=int(data.get("deployed_block", 0)), params=dict(data.get("params") or {}),
                       abi_paths={"Staking": contracts["staking"].get("abi", ""),
                                  "Rewards": contracts["rewards"].get("abi", "")},
                       deployer=acct(data.get("deployer")), treasury=acct(data.get("treasury")),
                       faucet=acct(data.get("faucet")),
                       verifiers=[a for a in map(acct, data.get("verifiers") or []) if a],
                       accounts=[a for a in map(acct, data.get("accounts") or []) if a],
                       process=dict(data.get("process") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise ChainError(f"{source} is malformed: {type(exc).__name__}: {exc}") from None

    @classmethod
    def load(cls, path: Path | str) -> Deployment:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ChainError(f"deployment file {path} not found (start a devnet with `veriswarm devnet up`)") from None
        except (OSError, ValueError) as exc:
            raise ChainError(f"deployment file {path} is not readable JSON: {exc}") from None
        return cls.from_json(data, f"deployment file {path}")


# ---- node registration --------------------------------------------------------------------------------
def ensure_registered(deployment: Deployment, key: bytes, *, endpoint: str, shard_index: int, manifest_hash: str,
                      stake_wei: int = 0, chain: Chain | None = None,
                      log: Callable[[str], None] = lambda _m: None) -> str:
    """Make the on-chain record of the node with ``key`` say what it serves. Idempotent: only what differs is
    sent (register, updateShard, updateEndpoint, addStake). ``stake_wei`` 0 means the contract's minStake.
    On a devnet, a node short of funds is topped up from the deployment's faucet. Returns a summary."""
    chain = chain or deployment.chain()
    if chain.chain_id != deployment.chain_id:
        raise ChainError(f"the chain at {deployment.rpc_url} has id {chain.chain_id}, the deployment says {deployment.chain_id}")
    staking = deployment.staking_contract(chain)
    address = address_of(key)
    manifest = _b(manifest_hash)
    stake = stake_wei or int(staking.call("minStake"))
    node = staking.call("getNode", address)
    status = NODE_STATUS[node["status"]]
    if status == "unbonding":
        raise ChainError(f"node {address} is unbonding on chain (unlocks at {node['unlockAt']}); withdraw and "
                         "register again, or use another key")
    actions: list[str] = []
    if status == "none":
        _fund(chain, deployment, address, stake + REGISTRATION_GAS_RESERVE)
        staking.transact(key, "register", endpoint, shard_index, manifest, value=stake)
        actions.append(f"registered with stake {stake} wei")
    else:
        if (node["manifestHash"], node["shardIndex"]) != (manifest, shard_index):
            _fund(chain, deployment, address, REGISTRATION_GAS_RESERVE)
            staking.transact(key, "updateShard", manifest, shard_index)
            actions.append(f"moved to shard {shard_index} of {manifest_hash}")
        if node["endpoint"] != endpoint:
            _fund(chain, deployment, address, REGISTRATION_GAS_RESERVE)
            staking.transact(key, "updateEndpoint", endpoint)
            actions.append(f"endpoint set to {endpoint}")
        if node["stake"] < stake:
            missing = stake - int(node["stake"])
            _fund(chain, deployment, address, missing + REGISTRATION_GAS_RESERVE)
            staking.transact(key, "addStake", value=missing)
            actions.append(f"stake topped up by {missing} wei")
    summary = f"node {address} on chain {deployment.chain_id}: " + ("; ".join(actions) or "already registered")
    log(summary)
    return summary


def _fund(chain: Chain, deployment: Deployment, address: str, needed: int) -> None:
    have = chain.balance(address)
    if have >= needed:
        return
    if deployment.faucet is None:
        raise ChainError(f"{address} holds {have} wei but needs {needed} wei (stake + gas); fund it first")
    chain.transfer(deployment.faucet.key, address, needed - have)


# ---- slashing ------------------------------------------------------------------------------------------
def equivocation_evidence_id(node: str, manifest_hash: str, shard_index: int, context_hash: str) -> bytes:
    """The evidence id Staking derives for an equivocation: one slash per (node, manifest, shard, context)."""
    from eth_abi import encode

    return keccak(encode(["uint8", "address", "bytes32", "uint32", "bytes32"],
                         [0, to_checksum_address(node), _b(manifest_hash), shard_index, _b(context_hash)]))


def slash_equivocation(deployment: Deployment, reporter_key: str | bytes, a: Receipt, b: Receipt, *,
                       chain: Chain | None = None) -> dict[str, Any]:
    """Open a slash with two conflicting receipts signed by one node (anyone may; the reporter posts the
    challenge bond). Returns the ``SlashProposed`` event (slashId, node, amount, evidenceId, executableAt...)."""
    staking = deployment.staking_contract(chain)
    bond = int(staking.call("challengeBond"))
    receipt = staking.transact(reporter_key, "slashEquivocation", receipt_tuple(a), _b(a.signature), receipt_tuple(b),
                               _b(b.signature), value=bond)
    return staking.events(receipt, "SlashProposed")[0]


def slash_with_verdict(deployment: Deployment, reporter_key: str | bytes, node: str, evidence_hash: bytes,
                       slash_bps: int, deadline: int, verifier_keys: Sequence[str | bytes] | None = None, *,
                       chain: Chain | None = None) -> dict[str, Any]:
    """Open a slash from a fault verdict signed by the verifier quorum. Returns the ``SlashProposed`` event."""
    staking = deployment.staking_contract(chain)
    keys = list(verifier_keys) if verifier_keys is not None else [v.key for v in deployment.verifiers]
    digest = verdict_digest(deployment.chain_id, deployment.staking, node, evidence_hash, slash_bps, deadline)
    sigs = quorum_signatures(digest, keys)
    bond = int(staking.call("challengeBond"))
    receipt = staking.transact(reporter_key, "slashWithVerdict", (to_checksum_address(node), evidence_hash, slash_bps,
                                                                  deadline), sigs, value=bond)
    return staking.events(receipt, "SlashProposed")[0]


class VerifierFaultKind(IntEnum):
    """``Staking.VerifierFaultKind``: what a slashed verifier did."""

    HONEYPOT_APPROVAL = 0  # approved a known-answer session with a planted fault
    VOTE_AGAINST_OUTCOME = 1  # signed a vote against an outcome the quorum decided


@dataclass(frozen=True)
class VerifierSlash:
    """An executed ``Staking.slashVerifier`` (its ``VerifierSlashed`` event and transaction)."""

    verifier: str
    kind: VerifierFaultKind
    evidence_id: bytes
    amount: int  # wei taken from the verifier's stake
    reporter: str
    reporter_reward: int  # credited to the reporter; amount - reporter_reward went to the treasury
    remaining_stake: int
    left_quorum: bool  # an active verifier left below minVerifierStake is moved to unbonding
    tx_hash: str
    gas_used: int


def verifier_evidence_id(verifier: str, evidence_hash: bytes) -> bytes:
    """The evidence id Staking derives for a verifier fault: one slash per (verifier, evidenceHash)."""
    from eth_abi import encode

    return keccak(encode(["uint8", "address", "bytes32"], [2, to_checksum_address(verifier), evidence_hash]))


def slash_verifier(deployment: Deployment, reporter_key: str | bytes, verifier: str, kind: VerifierFaultKind,
                   evidence_hash: bytes, slash_bps: int, deadline: int,
                   verifier_keys: Sequence[str | bytes] | None = None, *, chain: Chain | None = None) -> VerifierSlash:
    """Slash ``verifier``'s stake by ``slash_bps`` (≤ ``MAX_VERIFIER_SLASH_BPS``) for a fault signed by a 2/3
    stake-weighted quorum of the *other* active verifiers (``verifier_keys``; default: the deployment's verifiers
    but the accused, whose signature the contract refuses). Executes at once, no bond: the reporter is credited
    ``reporterShareBps`` of the amount, the treasury the rest. Reverts (``ContractRevert``) with
    ``QuorumNotReached``, ``AccusedSigned``, ``EvidenceAlreadyUsed``, ``UnexpectedVerifierStatus``,
    ``VerifierSlashBpsTooHigh``..."""
    chain = chain or deployment.chain()
    staking = deployment.staking_contract(chain)
    accused = to_checksum_address(verifier)
    if verifier_keys is None:
        verifier_keys = [v.key for v in deployment.verifiers if to_checksum_address(v.address) != accused]
    digest = verifier_fault_digest(deployment.chain_id, deployment.staking, accused, int(kind), evidence_hash, slash_bps,
                                   deadline)
    sigs = quorum_signatures(digest, list(verifier_keys))
    receipt = staking.transact(reporter_key, "slashVerifier", (accused, int(kind), evidence_hash, slash_bps, deadline),
                               sigs)
    [event] = staking.events(receipt, "VerifierSlashed")
    left = bool(staking.events(receipt, "VerifierUnbondRequested"))
    return VerifierSlash(verifier=to_checksum_address(event["verifier"]), kind=VerifierFaultKind(event["kind"]),
                         evidence_id=bytes(event["evidenceId"]), amount=int(event["amount"]),
                         reporter=to_checksum_address(event["reporter"]), reporter_reward=int(event["reporterReward"]),
                         remaining_stake=int(event["remainingStake"]), left_quorum=left, tx_hash=receipt.tx_hash,
                         gas_used=receipt.gas_used)
