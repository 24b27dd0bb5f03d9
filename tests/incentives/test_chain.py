"""The JSON-RPC client against a real anvil: reverts decoded by name, nonces, retries, a chain that is down,
and idempotent node registration."""

from __future__ import annotations

import http.server
import json
import os
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.deploy.devnet_fixtures import chain, devnet
from veriswarm.incentives.chain import Chain, ContractRevert, Deployment, ensure_registered
from veriswarm.incentives.errors import ChainError
from veriswarm.receipts import address_of

__all__ = ["chain", "devnet"]
MANIFEST = "0x" + "ab" * 32
ETHER = 10**18


def test_reverts_are_decoded_into_the_contracts_custom_errors(devnet: Deployment, chain: Chain) -> None:
    staking = devnet.staking_contract(chain)
    key = devnet.accounts[0].key
    with pytest.raises(ContractRevert) as err:
        staking.transact(key, "register", "http://n", 0, bytes(32), value=ETHER // 2)
    assert err.value.name == "InsufficientStake" and "Staking.register reverted: InsufficientStake(sent=" in str(err.value)
    staking.transact(key, "register", "http://n", 0, bytes(32), value=ETHER)
    with pytest.raises(ContractRevert, match="AlreadyRegistered"):
        staking.transact(key, "register", "http://n", 0, bytes(32), value=ETHER)
    # a transaction sent with explicit gas is mined and fails; the reason is recovered by replaying it
    with pytest.raises(ContractRevert) as err:
        staking.transact(key, "register", "http://n", 0, bytes(32), value=ETHER, gas=300_000)
    assert err.value.name == "AlreadyRegistered"
    with pytest.raises(ContractRevert) as err:
        devnet.rewards_contract(chain).call("claim", 5, 1, [], sender=devnet.accounts[0].address)
    assert err.value.name == "EpochNotSettled"


def test_two_clients_sharing_a_key_resync_their_nonces(devnet: Deployment, chain: Chain) -> None:
    other = devnet.chain()  # e.g. another process holding the same key
    key, to = devnet.accounts[1].key, devnet.accounts[2].address
    start = int(chain.rpc("eth_getTransactionCount", devnet.accounts[1].address, "latest"), 16)
    chain.transfer(key, to, 1)
    other.transfer(key, to, 1)  # uses the nonce `chain` now believes is next
    chain.transfer(key, to, 1)  # "nonce too low" → re-read → re-sign → sent
    other.transfer(key, to, 1)
    assert int(chain.rpc("eth_getTransactionCount", devnet.accounts[1].address, "latest"), 16) == start + 4


def test_concurrent_senders_on_one_client(devnet: Deployment, chain: Chain) -> None:
    key, to = devnet.accounts[1].key, devnet.accounts[3].address
    before = chain.balance(to)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(8):
                chain.transfer(key, to, 1)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and chain.balance(to) == before + 32


class _FlakyProxy(http.server.BaseHTTPRequestHandler):
    """Forwards JSON-RPC to anvil; fails the first ``fail_before`` requests with 503 and, for the methods in
    ``lose_reply``, forwards the request but answers 503 (the reply is lost, the effect is not)."""

    upstream = ""
    url = ""
    fail_before = 0
    lose_reply: set[str] = set()
    seen: list[str] = []
    out_of_range = 0  # eth_calls answered with anvil's BlockOutOfRangeError race

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        cls = type(self)
        method = json.loads(body)["method"]
        cls.seen.append(method)
        if cls.fail_before > 0:
            cls.fail_before -= 1
            return self._answer(503, b"busy")
        if method == "eth_call" and cls.out_of_range > 0:
            cls.out_of_range -= 1
            error = {"code": -32602, "message": "BlockOutOfRangeError: block height is 10 but requested was 9"}
            return self._answer(200, json.dumps({"jsonrpc": "2.0", "id": json.loads(body)["id"], "error": error}).encode())
        req = urllib.request.Request(cls.upstream, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as resp:
            answer = resp.read()
        if method in cls.lose_reply:
            cls.lose_reply.discard(method)
            return self._answer(503, b"lost")
        self._answer(200, answer)

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def proxy(devnet: Deployment) -> Iterator[type[_FlakyProxy]]:
    class Handler(_FlakyProxy):  # a fresh subclass per test: its class attributes are its state
        upstream = devnet.rpc_url
        seen: list[str] = []
        lose_reply: set[str] = set()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Handler.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield Handler
    server.shutdown()
    server.server_close()


def test_transient_errors_are_retried_and_a_lost_reply_never_sends_twice(devnet: Deployment, chain: Chain,
                                                                         proxy: type[_FlakyProxy]) -> None:
    flaky = Chain(proxy.url, retries=3, backoff_s=0.01)
    proxy.fail_before = 2
    assert flaky.block_number() == chain.block_number()  # two 503s, then through
    sender = devnet.accounts[2]
    nonce = int(chain.rpc("eth_getTransactionCount", sender.address, "latest"), 16)
    proxy.lose_reply = {"eth_sendRawTransaction"}
    receipt = flaky.transfer(sender.key, devnet.accounts[3].address, 5)
    assert receipt.status == 1 and proxy.seen.count("eth_sendRawTransaction") >= 2
    # the transaction went through once: exactly one nonce was used
    assert int(chain.rpc("eth_getTransactionCount", sender.address, "latest"), 16) == nonce + 1
    proxy.fail_before = 10
    with pytest.raises(ChainError, match="chain unreachable at .*HTTP 503 after 2 attempts"):
        Chain(proxy.url, retries=1, backoff_s=0.01).block_number()


def test_anvils_latest_block_race_is_retried(devnet: Deployment, chain: Chain, proxy: type[_FlakyProxy]) -> None:
    """anvil sometimes answers an eth_call at "latest" with BlockOutOfRangeError while it mines a block
    (seen once in this suite's devnet test); a read retries it, up to three times."""
    staking = devnet.staking_contract(Chain(proxy.url, retries=0, backoff_s=0.01))
    expected = devnet.staking_contract(chain).call("minStake")
    proxy.out_of_range = 3
    assert staking.call("minStake") == expected
    proxy.out_of_range = 4
    with pytest.raises(ChainError, match="BlockOutOfRange"):
        staking.call("minStake")


def test_a_chain_that_is_down_is_one_clear_error() -> None:
    from veriswarm.deploy.devnet import free_port

    dead = Chain(f"http://127.0.0.1:{free_port()}", retries=1, backoff_s=0.01)
    with pytest.raises(ChainError) as err:
        dead.contract("Rewards", "0x" + "11" * 20).call("lastSettledEpoch")
    msg = str(err.value)
    assert msg.startswith("chain unreachable at http://127.0.0.1:") and "connection refused" in msg and "\n" not in msg


def test_node_registration_is_idempotent(devnet: Deployment, chain: Chain) -> None:
    key = os.urandom(32)  # a fresh node key with no funds: the devnet faucet tops it up
    address = address_of(key)
    staking = devnet.staking_contract(chain)
    first = ensure_registered(devnet, key, endpoint="http://127.0.0.1:9001", shard_index=1, manifest_hash=MANIFEST,
                              chain=chain)
    assert "registered with stake" in first
    assert ensure_registered(devnet, key, endpoint="http://127.0.0.1:9001", shard_index=1, manifest_hash=MANIFEST,
                             chain=chain).endswith("already registered")
    assert staking.call("registeredNodes", bytes.fromhex(MANIFEST[2:]), 1) == [address]
    changed = ensure_registered(devnet, key, endpoint="http://127.0.0.1:9002", shard_index=0, manifest_hash=MANIFEST,
                                stake_wei=3 * ETHER, chain=chain)
    assert "moved to shard 0" in changed and "endpoint set" in changed and "stake topped up" in changed
    node = staking.call("getNode", address)
    assert (node["endpoint"], node["shardIndex"], node["stake"]) == ("http://127.0.0.1:9002", 0, 3 * ETHER)
    assert staking.call("activeNodes", bytes.fromhex(MANIFEST[2:]), 0) == {"nodes": [address],
                                                                            "endpoints": ["http://127.0.0.1:9002"]}
    staking.transact(key, "requestUnbond")
    with pytest.raises(ChainError, match="is unbonding on chain"):
        ensure_registered(devnet, key, endpoint="http://127.0.0.1:9002", shard_index=0, manifest_hash=MANIFEST, chain=chain)
