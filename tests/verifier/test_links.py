"""Cross-hop links over real submissions: shard i's signed input must be shard i−1's signed output.

Receipts come from real node processes (the session-scoped tiny swarm); hops reach the verifier through
its HTTP service (``POST /v1/hops``), as a client's HttpSink posts them.
"""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import torch
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestClient, TestServer

from veriswarm.client import AsyncClient
from veriswarm.deploy.local import LocalSwarm
from veriswarm.frames import decode_tensor, encode_tensor
from veriswarm.manifest import ModelDir
from veriswarm.protocol import PROTOCOL_VERSION, VERSION_HEADER, ForwardRequest, HopSubmission, StepResult, decode_reply, encode_envelope
from veriswarm.receipts import Receipt, hex32
from veriswarm.sinks import HopRecord, MemorySink
from veriswarm.verifier.core import Verifier, VerifierConfig
from veriswarm.verifier.honeypot import judge, make_honeypot
from veriswarm.verifier.links import CARRIER_BLAME
from veriswarm.verifier.service import make_app

V = {VERSION_HEADER: PROTOCOL_VERSION}


def _client(server: BaseTestServer) -> TestClient[web.Request, None]:
    return TestClient(server)


def _body(rec: HopRecord) -> bytes:
    sub = HopSubmission(receipt=rec.receipt.to_json(), node_url=rec.node_url, node_address=rec.node_address,
                        input_bytes=len(rec.input_frame))
    return encode_envelope(sub, rec.input_frame + rec.output_frame)


async def _post_all(http: TestClient[web.Request, None], records: list[HopRecord]) -> None:
    for rec in records:
        resp = await http.post("/v1/hops", data=_body(rec), headers=V)
        assert resp.status == 202, await resp.text()


async def _forward(http: aiohttp.ClientSession, swarm: LocalSwarm, shard: int, manifest: str, session: str,
                   frame: bytes) -> HopRecord:
    """One stateless hop on a real node: the node signs exactly the frame it received."""
    node = swarm.nodes[shard]
    req = ForwardRequest(manifest_hash=manifest, shard_index=shard, session_id=session, request_nonce=hex32(os.urandom(32)))
    async with http.post(f"{swarm.urls[shard]}/v1/forward", data=encode_envelope(req, frame), headers=V) as resp:
        assert resp.status == 200, await resp.text()
        reply, payload = decode_reply(await resp.read())
    assert isinstance(reply, StepResult)
    return HopRecord(Receipt.from_json(reply.receipt), swarm.urls[shard], node.address, frame, bytes(payload))


async def _two_hops(swarm: LocalSwarm, manifest: str, *, tamper: bool) -> tuple[HopRecord, HopRecord]:
    """Shard 0 then shard 1 on one session; with ``tamper`` the carrier changes one value of the frame
    between them (a tampering client or relay), and node 1 signs the frame it actually got."""
    session = hex32(os.urandom(32))
    torch.manual_seed(1)
    x = torch.randn(1, 4, 64)
    async with aiohttp.ClientSession() as http:
        hop0 = await _forward(http, swarm, 0, manifest, session, encode_tensor(x))
        carried = hop0.output_frame
        if tamper:
            y = decode_tensor(carried, max_bytes=1 << 20, dtypes=frozenset({torch.float32})).clone()
            y[0, 2, 5] += 0.25
            carried = encode_tensor(y)
        hop1 = await _forward(http, swarm, 1, manifest, session, carried)
    return hop0, hop1


async def test_an_honest_generation_links_every_hop(tiny_swarm: LocalSwarm, tiny_dir: Path) -> None:
    sink = MemorySink()
    async with AsyncClient(tiny_dir, tiny_swarm.urls, sink=sink) as client:
        await client.generate_ids([4, 5, 6], max_new_tokens=5, ignore_eos=True)
    verifier = Verifier(ModelDir.open(tiny_dir), config=VerifierConfig(audit_rate=0.0, idle_s=3600))
    async with TestServer(make_app(verifier=verifier)) as server, _client(server) as http:
        await _post_all(http, sink.records)
        body = await (await http.get("/v1/verdicts")).json()
    assert len(sink.records) == 2 * 5
    assert body["stats"]["links_checked"] == 5 and body["stats"]["link_faults"] == 0  # one link per step
    assert verifier.link_faults == [] and not [v for v in body["verdicts"] if v.get("kind") == "link"]


async def test_a_tampered_link_is_flagged_with_both_signed_receipts(tiny_swarm: LocalSwarm, tiny_dir: Path) -> None:
    md = ModelDir.open(tiny_dir)
    honest = await _two_hops(tiny_swarm, md.manifest.hash, tamper=False)
    tampered = await _two_hops(tiny_swarm, md.manifest.hash, tamper=True)
    # Each node's receipt is valid on its own: both submissions are accepted.
    verifier = Verifier(md, config=VerifierConfig(audit_rate=0.0, idle_s=3600))
    async with TestServer(make_app(verifier=verifier)) as server, _client(server) as http:
        await _post_all(http, [*honest, *tampered])
        body = await (await http.get("/v1/verdicts")).json()
    assert body["stats"]["links_checked"] == 2 and body["stats"]["link_faults"] == 1
    [fault] = verifier.link_faults
    assert fault.session_id == tampered[1].receipt.session_id and fault.step == 0
    assert fault.upstream.receipt == tampered[0].receipt and fault.downstream.receipt == tampered[1].receipt
    assert fault.downstream.receipt.input_hash != fault.upstream.receipt.output_hash
    [verdict] = [v for v in body["verdicts"] if v.get("kind") == "link"]
    assert verdict["passed"] is False and verdict["session"] == fault.session_id and verdict["shard"] == 1
    assert verdict["evidence"] == [tampered[0].receipt.receipt_id(), tampered[1].receipt.receipt_id()]
    assert verdict["link"]["blame"] == CARRIER_BLAME and "inputHash" in verdict["summary"]
    # Both receipts are node-signed evidence: they recover to the two nodes.
    assert fault.upstream.receipt.signer(verifier.domain) == tiny_swarm.nodes[0].address
    assert fault.downstream.receipt.signer(verifier.domain) == tiny_swarm.nodes[1].address
    assert verifier.stats["faults"] == 0  # a link is not a node fault: no audit fault, no slash


async def test_link_check_does_not_depend_on_arrival_order(tiny_swarm: LocalSwarm, tiny_dir: Path) -> None:
    md = ModelDir.open(tiny_dir)
    honest = await _two_hops(tiny_swarm, md.manifest.hash, tamper=False)
    tampered = await _two_hops(tiny_swarm, md.manifest.hash, tamper=True)
    verifier = Verifier(md, config=VerifierConfig(audit_rate=0.0, idle_s=3600))
    async with TestServer(make_app(verifier=verifier)) as server, _client(server) as http:
        await _post_all(http, [honest[1], tampered[1]])  # hop i before hop i−1
        assert verifier.stats["links_checked"] == 0  # nothing to compare with yet
        await _post_all(http, [tampered[0], honest[0]])
    assert verifier.stats["links_checked"] == 2 and verifier.stats["link_faults"] == 1
    [fault] = verifier.link_faults
    assert (fault.upstream.receipt, fault.downstream.receipt) == (tampered[0].receipt, tampered[1].receipt)


def test_link_verdicts_do_not_confuse_honeypot_judging(tiny_dir: Path) -> None:
    """judge() reads audit verdicts only: a link verdict on the same (session, shard) is not an audit."""
    from veriswarm.receipts import ReceiptDomain
    from veriswarm.split.artifacts import load_shard

    md = ModelDir.open(tiny_dir)
    pot = make_honeypot(load_shard(md, 1), 1, md.manifest.hash, os.urandom(32), domain=ReceiptDomain(), seed=3)
    link = {"kind": "link", "session": pot.session_id, "shard": 1, "passed": False}
    assert judge(pot, [link]) == "unaudited"
    assert judge(pot, [link, {"kind": "audit", "session": pot.session_id, "shard": 1, "passed": True}]) == "approved"
