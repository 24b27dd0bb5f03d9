"""A zk proof after every disagreement, with real node processes serving the tiny model.

Shard 0 is an honest node, shard 1 a wrong-weights adversary (tests/adversaries/evil_node.py). The
verifier pre-registers a few tiny slices (64→16 / 128→16 rows, logrows 10–11: setup and proving well
under a second each), audits a real generation, and challenges the node it disagrees with over
``POST /v1/prove``. Keys go to a per-module cache; SRS files come from the usual SRS cache.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from veriswarm.client import Client
from veriswarm.deploy.local import LocalSwarm
from veriswarm.incentives.ledger import Ledger
from veriswarm.incentives.models import SlashRow
from veriswarm.manifest import ModelDir
from veriswarm.protocol import PROTOCOL_VERSION, VERSION_HEADER
from veriswarm.sinks import HopRecord, MemorySink
from veriswarm.verifier.core import Verifier, VerifierConfig
from veriswarm.verifier.zk import SliceSpec, ZkConfig
from veriswarm.verifier.zkaudit import ZkAuditor, http_post
from veriswarm.zkwire import PROVE_PATH, ProveRequest, encode_prove_request

EVIL = [sys.executable, "-m", "tests.adversaries.evil_node", "--mode", "wrong_weights", "--scale", "1e-2"]


@dataclass
class Dispute:
    md: ModelDir
    swarm: LocalSwarm
    records: list[HopRecord]  # one generation: 6 steps on each shard
    config: ZkConfig
    specs: list[SliceSpec]

    def shard_records(self, shard: int) -> list[HopRecord]:
        return sorted((r for r in self.records if r.receipt.shard_index == shard), key=lambda r: r.receipt.step)

    def auditor(self, **kw: Any) -> ZkAuditor:
        return ZkAuditor.for_slices(self.md, self.specs, config=self.config, **kw)


@pytest.fixture(scope="module")
def dispute(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dispute]:
    cache = tmp_path_factory.mktemp("zk-dispute-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VERISWARM_ZK_CACHE", str(cache))  # the node processes inherit it
        md = ModelDir.open(tiny_dir)
        h = md.manifest.hash
        specs = [SliceSpec(h, 0, 0, "self_attn.q_proj", 0), SliceSpec(h, 0, 1, "mlp.up_proj", 32),
                 SliceSpec(h, 1, 2, "self_attn.q_proj", 16), SliceSpec(h, 1, 3, "mlp.down_proj", 0)]
        swarm = LocalSwarm(model_dir=tiny_dir, workdir=tmp_path_factory.mktemp("zk-dispute-swarm"), torch_threads=1,
                           commands={1: EVIL})
        with swarm:
            sink = MemorySink()
            with Client(tiny_dir, swarm.urls, sink=sink) as client:
                client.generate_ids([5, 6, 7, 8], max_new_tokens=6, ignore_eos=True)
            yield Dispute(md, swarm, sink.records, ZkConfig(cache_dir=cache), specs)


def test_a_disagreement_triggers_a_proof_the_wrong_weights_node_cannot_give(dispute: Dispute, tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.create_schema()
    verifier = Verifier(dispute.md, ledger=ledger, config=VerifierConfig(audit_rate=1.0, zk_sample_rate=0.0),
                        zk=dispute.auditor())
    for rec in dispute.records:
        verifier.submit(rec)
    verdicts = {v.shard_index: v for v in verifier.audit_due(force=True)}
    assert verdicts[0].passed and not verdicts[1].passed
    # Only the disagreement was challenged, once.
    assert verifier.stats["zk_challenges"] == 1 and verifier.stats["zk_failed"] == 1
    [entry] = [v for v in verifier.verdicts if v.get("shard") == 1]
    zk = entry["zk"]
    assert isinstance(zk, dict)
    assert zk["status"] == "invalid" and zk["slice"]["shard"] == 1
    first = verdicts[1].first_failure
    assert first is not None and zk["step"] == first.step
    # The node proved the weights it runs: its proof is under another vk than the manifest's weights give.
    assert "vk" in zk["detail"], zk["detail"]
    # Its claimed rows are off from honest re-execution far beyond the proof's tolerance.
    assert zk["claimed_vs_reference"] > 10 * zk["tolerance"]
    assert "zk proof INVALID" in str(entry["summary"])
    # The signed claim and proof are part of the slash evidence in the ledger.
    [slash] = ledger.slashes()
    assert slash["node_address"] == dispute.swarm.nodes[1].address
    with ledger._sessions() as s:  # the stored evidence row (Ledger.slashes() lists no details)
        row = s.get(SlashRow, slash["id"])
        assert row is not None
        detail = row.detail
    assert detail["zk"]["status"] == "invalid" and detail["zk"]["proof"]["format"] == "veriswarm-zk-proof/1"
    assert detail["zk"]["signature"].startswith("0x") and len(detail["zk"]["claimed_output"]) == 16


def test_an_honest_node_proves_its_slice_and_the_proof_verifies(dispute: Dispute) -> None:
    """The same challenge to the honest node (as if re-execution had disagreed): a valid, signed proof for
    each of its registered slices, matching the verifier's re-execution within tolerance. The layer-1 slice's
    input passes through a whole decoder layer first, where the node (1 thread) and the verifier (default
    threads) differ by fp32 noise of about a quantum: the relative input slack admits that."""
    records = dispute.shard_records(0)
    shard = Verifier(dispute.md).shard(0)
    for spec in (s for s in dispute.specs if s.shard == 0):
        auditor = ZkAuditor.for_slices(dispute.md, [spec], config=dispute.config)
        for step in (0, 5):
            ev = auditor.challenge(shard, records, step)
            assert ev is not None and ev.slice == spec
            assert ev.status == "valid", ev.detail
            assert not ev.failing and ev.signature and ev.proof is not None
            assert ev.proven_vs_reference is not None and ev.tolerance is not None
            assert ev.proven_vs_reference <= ev.tolerance
            assert ev.input_quanta is not None and ev.input_quanta < 100
            r = records[step].receipt
            assert r.start_pos <= ev.token < r.start_pos + r.num_tokens


def test_no_proof_within_the_deadline_counts_as_failing(dispute: Dispute) -> None:
    records = dispute.shard_records(0)
    shard = Verifier(dispute.md).shard(0)
    gone = [HopRecord(r.receipt, "http://127.0.0.1:9", r.node_address, r.input_frame, r.output_frame) for r in records]
    ev = dispute.auditor(deadline_s=5.0).challenge(shard, gone, 1)
    assert ev is not None and ev.status == "missing" and ev.failing and "no proof within" in ev.detail
    slow = dispute.auditor(deadline_s=0.001).challenge(shard, records, 1)
    assert slow is not None and slow.status == "missing" and slow.failing


def test_an_altered_answer_is_rejected_by_the_nodes_signature(dispute: Dispute) -> None:
    """A relay (or the node) changing the claimed rows after signing: the claim no longer recovers to the node."""
    records = dispute.shard_records(0)
    shard = Verifier(dispute.md).shard(0)

    def tampering_post(url: str, body: bytes, timeout_s: float) -> bytes:
        answer = json.loads(http_post(url, body, timeout_s))
        answer["claimed_output"][0] += 1.0
        return json.dumps(answer).encode()

    ev = dispute.auditor(post=tampering_post).challenge(shard, records, 2)
    assert ev is not None and ev.status == "invalid" and "signed by" in ev.detail


def test_the_prove_endpoint_refuses_bad_requests(dispute: Dispute) -> None:
    import urllib.error
    import urllib.request

    records = dispute.shard_records(0)
    url = dispute.swarm.urls[0] + PROVE_PATH
    spec = dispute.specs[0]
    frames = [r.input_frame for r in records[:2]]
    good = ProveRequest(slice=spec.to_dict(), session_id=records[0].receipt.session_id, step=1, token=0,
                        input_hashes=[r.receipt.input_hash for r in records[:2]], frame_bytes=[len(f) for f in frames],
                        nonce="0x" + os.urandom(32).hex())

    def post(body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, dict[str, str]]]:
        req = urllib.request.Request(url, data=body, method="POST",
                                     headers={VERSION_HEADER: PROTOCOL_VERSION} if headers is None else headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    wrong_hash = good.model_copy(update={"input_hashes": [good.input_hashes[1], good.input_hashes[0]]})
    other_shard = good.model_copy(update={"slice": dispute.specs[2].to_dict()})
    bad_token = good.model_copy(update={"token": 10_000})
    cases: list[tuple[bytes, dict[str, str] | None, int, str]] = [
        (encode_prove_request(good, frames), {}, 400, "protocol_version"),
        (b"junk", None, 400, "bad_frame"),
        (encode_prove_request(wrong_hash, frames), None, 400, "bad_frame"),
        (encode_prove_request(other_shard, frames), None, 409, "wrong_shard"),
        (encode_prove_request(bad_token, frames), None, 400, "bad_request"),
    ]
    for body, headers, status, code in cases:
        got, answer = post(body, headers)
        assert (got, answer["error"]["code"]) == (status, code), answer
        assert "\n" not in answer["error"]["message"]


def test_the_verifier_menu_is_a_reproducible_draw_per_shard(dispute: Dispute) -> None:
    """What ``veriswarm verifier start --zk-slices 1`` registers: one hidden-state-fed slice per shard,
    drawn from the seed (the beacon secret), the same for the same seed."""
    seed = b"\x01" * 32
    a = ZkAuditor.sampled(dispute.md, 1, seed=seed, config=dispute.config)
    b = ZkAuditor.sampled(dispute.md, 1, seed=seed, config=dispute.config)
    specs = sorted((e.spec for e in a.registry), key=lambda s: s.shard)
    assert [s.shard for s in specs] == [0, 1]
    assert {e.spec.slice_id for e in a.registry} == {e.spec.slice_id for e in b.registry}
    assert all(s.matrix in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
               for s in specs)
    assert a.registry.to_json()["slices"][0]["vk_sha256"]


async def test_the_verifier_service_reports_the_dispute(dispute: Dispute) -> None:
    """Through the HTTP service: hops posted to /v1/hops, an audit run by /v1/audit, the zk result in /v1/verdicts."""
    from aiohttp.test_utils import TestClient, TestServer

    from veriswarm.protocol import HopSubmission, encode_envelope
    from veriswarm.verifier.service import make_app

    verifier = Verifier(dispute.md, config=VerifierConfig(audit_rate=1.0, idle_s=3600, zk_sample_rate=0.0),
                        zk=dispute.auditor())
    headers = {VERSION_HEADER: PROTOCOL_VERSION}
    async with TestServer(make_app(verifier=verifier)) as server:
        client: TestClient[Any, None] = TestClient(server)
        async with client as http:
            for rec in dispute.records:
                sub = HopSubmission(receipt=rec.receipt.to_json(), node_url=rec.node_url, node_address=rec.node_address,
                                    input_bytes=len(rec.input_frame))
                resp = await http.post("/v1/hops", data=encode_envelope(sub, rec.input_frame + rec.output_frame),
                                       headers=headers)
                assert resp.status == 202
            audited = (await (await http.post("/v1/audit", headers=headers)).json())["audited"]
            body = await (await http.get("/v1/verdicts")).json()
    assert sorted(a.split(":")[0] for a in audited) == ["FAIL at step 0", "pass"]
    [bad] = [v for v in body["verdicts"] if v["kind"] == "audit" and not v["passed"]]
    assert bad["shard"] == 1 and bad["zk"]["status"] == "invalid" and "proof" not in bad["zk"]
    assert body["stats"]["zk_challenges"] == 1 and body["stats"]["zk_failed"] == 1
    assert body["stats"]["links_checked"] == 6 and body["stats"]["link_faults"] == 0


def test_a_sampled_share_of_passing_audits_is_also_proven(dispute: Dispute, tmp_path: Path) -> None:
    """Not only disagreements: a passing audit, when the beacon's secret draws it, also asks the node for a
    proof. The honest node gives a valid one and keeps its pass; a node that cannot prove in time fails."""
    honest = dispute.shard_records(0)
    verifier = Verifier(dispute.md, config=VerifierConfig(audit_rate=1.0, zk_sample_rate=1.0), zk=dispute.auditor())
    for rec in honest:
        verifier.submit(rec)
    [verdict] = verifier.audit_due(force=True)
    assert verdict.passed
    assert (verifier.stats["zk_sampled"], verifier.stats["zk_failed"]) == (1, 0)
    assert verifier.verdicts[-1]["zk"]["status"] == "valid"
    # The same honest work, but the node has no time to prove: a refusal to prove is a failed audit.
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.create_schema()
    strict = Verifier(dispute.md, ledger=ledger, config=VerifierConfig(audit_rate=1.0, zk_sample_rate=1.0),
                      zk=dispute.auditor(deadline_s=0.001))
    for rec in honest:
        strict.submit(rec)
    [verdict] = strict.audit_due(force=True)
    assert not verdict.passed and "sampled zk proof" in verdict.problem
    assert strict.verdicts[-1]["zk"]["status"] == "missing"
    # At the default rate only some audits are sampled, and which ones is fixed by the secret, not by the node.
    default = Verifier(dispute.md, config=VerifierConfig(audit_rate=1.0), zk=dispute.auditor())
    drawn = [default._zk_sampled(f"0x{i:064x}", 0)[0] for i in range(2000)]
    assert 0.03 < sum(drawn) / len(drawn) < 0.07
