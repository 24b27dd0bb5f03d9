"""The verifier service over real HTTP: hops from a real client's HttpSink, audits, and bad input."""

from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from veriswarm.client import AsyncClient
from veriswarm.deploy.local import LocalSwarm
from veriswarm.incentives.ledger import Ledger
from veriswarm.manifest import ModelDir
from veriswarm.protocol import PROTOCOL_VERSION, VERSION_HEADER, HopSubmission, encode_envelope
from veriswarm.receipts import Receipt, hex32
from veriswarm.sinks import HopRecord, HttpSink, MemorySink
from veriswarm.verifier.core import Verifier, VerifierConfig
from veriswarm.verifier.service import make_app

V = {VERSION_HEADER: PROTOCOL_VERSION}


def _body(rec: HopRecord, **override: object) -> bytes:
    fields = {"receipt": rec.receipt.to_json(), "node_url": rec.node_url, "node_address": rec.node_address,
              "input_bytes": len(rec.input_frame), **override}
    return encode_envelope(HopSubmission(**fields), rec.input_frame + rec.output_frame)  # type: ignore[arg-type]


async def test_hops_posted_by_the_client_are_audited(tiny_swarm: LocalSwarm, tiny_dir: Path, tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    ledger.create_schema()
    verifier = Verifier(ModelDir.open(tiny_dir), ledger=ledger, config=VerifierConfig(audit_rate=1.0, idle_s=3600))
    async with TestServer(make_app(verifier=verifier)) as server, TestClient(server) as http:
        sink = HttpSink(str(server.make_url("")))
        async with AsyncClient(tiny_dir, tiny_swarm.urls, sink=sink) as client:
            gen = await client.generate_ids([4, 5, 6], max_new_tokens=6, ignore_eos=True)
        await asyncio.get_running_loop().run_in_executor(None, sink.flush)
        assert sink.sent == len(gen.records) == 2 * 6 and sink.failed == 0
        audited = (await (await http.post("/v1/audit", headers=V)).json())["audited"]
        assert len(audited) == 2 and all(a.startswith("pass") for a in audited)
        body = await (await http.get("/v1/verdicts")).json()
        assert body["stats"]["audited_sessions"] == 2 and body["stats"]["faults"] == 0
        assert all(ledger.receipt(r.receipt.receipt_id())["status"] == "verified" for r in gen.records)
        sink.close()


async def test_bad_submissions_are_refused_and_nothing_is_recorded(tiny_swarm: LocalSwarm, tiny_dir: Path,
                                                                   tmp_path: Path) -> None:
    sink = MemorySink()
    async with AsyncClient(tiny_dir, tiny_swarm.urls, sink=sink) as client:
        await client.generate_ids([4, 5, 6], max_new_tokens=2, ignore_eos=True)
    rec = sink.records[0]
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    ledger.create_schema()
    verifier = Verifier(ModelDir.open(tiny_dir), ledger=ledger, config=VerifierConfig(audit_rate=1.0))
    forged = Receipt(**{**rec.receipt.to_json(), "output_hash": hex32(os.urandom(32))})  # type: ignore[arg-type]
    other_manifest = Receipt(**{**rec.receipt.to_json(), "manifest_hash": "0x" + "12" * 32})  # type: ignore[arg-type]
    async with TestServer(make_app(verifier=verifier)) as server, TestClient(server) as http:
        no_version = await http.post("/v1/hops", data=_body(rec))
        assert no_version.status == 400 and (await no_version.json())["error"]["code"] == "protocol_version"
        assert (await http.post("/v1/hops", data=_body(rec), headers=V)).status == 202
        expect = [
            (await http.post("/v1/hops", data=_body(rec), headers=V), 409),  # replay of the same receipt
            (await http.post("/v1/hops", data=b"junk", headers=V), 400),
            (await http.post("/v1/hops", data=b"VSW1" + struct.pack("<I", 2) + b"{}", headers=V), 400),
            (await http.post("/v1/hops", data=_body(HopRecord(forged, rec.node_url, rec.node_address,
                                                              rec.input_frame, rec.output_frame)), headers=V), 422),
            (await http.post("/v1/hops", data=_body(HopRecord(other_manifest, rec.node_url, rec.node_address,
                                                              rec.input_frame, rec.output_frame)), headers=V), 422),
            (await http.post("/v1/hops", data=_body(rec, node_address="0x" + "ab" * 20), headers=V), 422),
            (await http.post("/v1/hops", data=_body(rec, input_bytes=10**9), headers=V), 400),
            (await http.post("/v1/hops", data=_body(rec, input_bytes=3), headers=V), 400),
            (await http.post("/v1/hops", data=b"\0" * (65 * 1024 * 1024), headers=V), 413),
        ]
        for resp, status in expect:
            assert resp.status == status, await resp.text()
            assert "\n" not in (await resp.json())["error"]["message"]
    # Only the one good submission reached the ledger; nothing verified, nothing slashed.
    assert ledger.receipt(rec.receipt.receipt_id())["status"] == "unaudited"
    assert ledger.slashes() == [] and verifier.stats["received"] == 1
    with pytest.raises(Exception, match="unknown receipt"):
        ledger.receipt(forged.receipt_id())
