"""Only listed verifiers may make a node prove or trace (a proof costs seconds of CPU, and a node that
misses a dispute deadline counts as failing): signed, fresh, unreplayed, for this endpoint and body."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.error
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.deploy.devnet_fixtures import chain, deployment_file, devnet
from veriswarm.incentives.chain import Deployment
from veriswarm.manifest import ModelDir
from veriswarm.node.app import make_app
from veriswarm.node.config import NodeConfig
from veriswarm.protocol import PROTOCOL_VERSION, VERSION_HEADER
from veriswarm.receipts import address_of
from veriswarm.split.artifacts import load_shard
from veriswarm.verifier.zkaudit import signed_post
from veriswarm.zkwire import CALLER_HEADER, PROVE_PATH, TRACE_PATH, caller_header

__all__ = ["chain", "deployment_file", "devnet"]  # fixtures

NODE_KEY, VERIFIER, STRANGER = os.urandom(32), os.urandom(32), os.urandom(32)
BODY = b"not a prove request"  # authentication comes first: a caller that passes it gets a 400 for this body


async def _node(tiny_dir: Path, zk_verifiers: str) -> TestClient:
    md = ModelDir.open(tiny_dir)
    cfg = NodeConfig(model_dir=tiny_dir, shard=0, zk_verifiers=zk_verifiers)
    app = make_app(config=cfg, manifest=md.manifest, shard=load_shard(md, 0), private_key=NODE_KEY)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def guarded(tiny_dir: Path) -> AsyncIterator[TestClient]:
    client = await _node(tiny_dir, f"{address_of(VERIFIER)}, 0x{'99' * 20}")
    yield client
    await client.close()


async def _post(node: TestClient, path: str, header: str | None, body: bytes = BODY) -> tuple[int, str]:
    headers = {VERSION_HEADER: PROTOCOL_VERSION}
    if header is not None:
        headers[CALLER_HEADER] = header
    resp = await node.post(path, data=body, headers=headers)
    return resp.status, (await resp.json())["error"]["message"]


SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def _now_ms() -> int:
    return int(time.time() * 1000)


@pytest.mark.parametrize("path", [PROVE_PATH, TRACE_PATH])
async def test_dispute_endpoints_answer_only_listed_verifiers(guarded: TestClient, path: str) -> None:
    assert (await _post(guarded, path, None))[0] == 403
    assert (await _post(guarded, path, "garbage"))[0] == 403
    status, why = await _post(guarded, path, caller_header(STRANGER, path, BODY, _now_ms()))
    assert status == 403 and "not a verifier this node answers" in why
    other = TRACE_PATH if path == PROVE_PATH else PROVE_PATH
    assert (await _post(guarded, path, caller_header(VERIFIER, other, BODY, _now_ms())))[0] == 403  # other endpoint
    assert (await _post(guarded, path, caller_header(VERIFIER, path, b"other", _now_ms())))[0] == 403  # other body
    status, why = await _post(guarded, path, caller_header(VERIFIER, path, BODY, _now_ms() - 600_000))
    assert status == 403 and "timestamp" in why
    good = caller_header(VERIFIER, path, BODY, _now_ms())
    assert (await _post(guarded, path, good))[0] == 400  # past authentication: the body itself is refused
    status, why = await _post(guarded, path, good)
    assert status == 403 and "already used" in why  # replayed
    # The same signature spelled otherwise (upper-case hex; the malleable twin s' = n - s, v flipped) is
    # still the same signed request: refused too, not mistaken for a fresh one.
    stamp, sig = good.split(":", 1)
    assert (await _post(guarded, path, f"{stamp}:0x{sig[2:].upper()}"))[0] == 403
    raw = bytes.fromhex(sig[2:])
    s = int.from_bytes(raw[32:64], "big")
    twin = raw[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - raw[64]])
    status, why = await _post(guarded, path, f"{stamp}:0x{twin.hex()}")
    assert status == 403 and "high s" in why


async def test_the_verifiers_signed_post_is_accepted(guarded: TestClient) -> None:
    url = str(guarded.make_url(PROVE_PATH))
    with pytest.raises(urllib.error.HTTPError) as err:
        await asyncio.to_thread(signed_post(VERIFIER), url, BODY, 10.0)
    assert err.value.code == 400  # authenticated; then refused as a malformed prove request
    with pytest.raises(urllib.error.HTTPError) as err:
        await asyncio.to_thread(signed_post(STRANGER), url, BODY, 10.0)
    assert err.value.code == 403


async def test_a_node_without_a_verifier_list_is_open(tiny_dir: Path) -> None:
    node = await _node(tiny_dir, "")
    try:
        assert (await _post(node, PROVE_PATH, None))[0] == 400
    finally:
        await node.close()


async def test_with_a_deployment_the_chains_active_verifiers_may_ask(tiny_dir: Path, devnet: Deployment,
                                                                     deployment_file: Path) -> None:
    """No list needed on a chain: a staked, active verifier of the deployment is answered; anyone else,
    including a funded account that is not a verifier, is refused."""
    md = ModelDir.open(tiny_dir)
    cfg = NodeConfig(model_dir=tiny_dir, shard=0, deployment=str(deployment_file))
    app = make_app(config=cfg, manifest=md.manifest, shard=load_shard(md, 0), private_key=NODE_KEY)
    async with TestClient(TestServer(app)) as node:
        verifier_key = bytes.fromhex(str(devnet.verifiers[0].key).removeprefix("0x"))
        outsider_key = bytes.fromhex(str(devnet.accounts[0].key).removeprefix("0x"))
        assert (await _post(node, PROVE_PATH, caller_header(verifier_key, PROVE_PATH, BODY, _now_ms())))[0] == 400
        status, why = await _post(node, PROVE_PATH, caller_header(outsider_key, PROVE_PATH, BODY, _now_ms()))
        assert status == 403 and "not a verifier this node answers" in why
        assert (await _post(node, TRACE_PATH, None))[0] == 403
