"""Narrowing a dispute to one layer before the proof (``POST /v1/trace``, verifier/trace.py), with real node
processes serving the tiny model (4 layers, 2 shards of 2).

Two swarms: A = honest shard 0 + wrong-weights shard 1 (every weight of layers 2–3 perturbed); B = a
skip-layer shard 0 (drops layer 1) + honest shard 1. One generation through each gives the signed hops.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from veriswarm.client import Client
from veriswarm.deploy.local import DEVNET_PASSWORD, LocalSwarm
from veriswarm.frames import decode_tensor, encode_tensor
from veriswarm.incentives.ledger import Ledger
from veriswarm.incentives.models import SlashRow
from veriswarm.keys import load_keystore
from veriswarm.manifest import ModelDir
from veriswarm.protocol import PROTOCOL_VERSION, VERSION_HEADER
from veriswarm.sinks import HopRecord, MemorySink
from veriswarm.split.artifacts import load_shard
from veriswarm.split.modeling import ShardModel
from veriswarm.verifier.core import Verifier, VerifierConfig
from veriswarm.verifier.trace import LAYER_TOLERANCE, TraceAuditor, http_post
from veriswarm.verifier.zk import SliceSpec, ZkConfig
from veriswarm.verifier.zkaudit import ZkAuditor
from veriswarm.zkwire import (
    TRACE_PATH,
    TraceRequest,
    TraceResponse,
    decode_trace_request,
    decode_trace_response,
    encode_trace_request,
    encode_trace_response,
    sign_claim,
    trace_digest,
)

EVIL = [sys.executable, "-m", "tests.adversaries.evil_node", "--scale", "1e-2", "--mode"]


@dataclass
class Swarms:
    md: ModelDir
    a: LocalSwarm  # honest shard 0, wrong_weights shard 1
    b: LocalSwarm  # skip_layer shard 0, honest shard 1
    records_a: list[HopRecord]
    records_b: list[HopRecord]
    config: ZkConfig
    shards: dict[int, ShardModel]

    def of(self, records: list[HopRecord], shard: int) -> list[HopRecord]:
        return sorted((r for r in records if r.receipt.shard_index == shard), key=lambda r: r.receipt.step)


def _generate(tiny_dir: Path, swarm: LocalSwarm) -> list[HopRecord]:
    sink = MemorySink()
    with Client(tiny_dir, swarm.urls, sink=sink) as client:
        client.generate_ids([5, 6, 7, 8], max_new_tokens=4, ignore_eos=True)
    return sink.records


@pytest.fixture(scope="module")
def swarms(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarms]:
    cache = tmp_path_factory.mktemp("trace-zk-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VERISWARM_ZK_CACHE", str(cache))  # the node processes inherit it
        a = LocalSwarm(model_dir=tiny_dir, workdir=tmp_path_factory.mktemp("trace-a"), torch_threads=1,
                       commands={1: [*EVIL, "wrong_weights"]})
        b = LocalSwarm(model_dir=tiny_dir, workdir=tmp_path_factory.mktemp("trace-b"), torch_threads=1,
                       commands={0: [*EVIL, "skip_layer"]})
        with a, b:
            md = ModelDir.open(tiny_dir)
            yield Swarms(md, a, b, _generate(tiny_dir, a), _generate(tiny_dir, b), ZkConfig(cache_dir=cache),
                         {i: load_shard(md, i) for i in range(2)})


def test_an_honest_nodes_transcript_is_consistent(swarms: Swarms) -> None:
    records = swarms.of(swarms.records_a, 0)
    for step, positions in ((0, 3), (2, 1)):
        ev = TraceAuditor(positions=positions).challenge(swarms.shards[0], records, step)
        assert ev.status == "consistent", ev.detail
        assert not ev.failing and ev.layer is None
        r = records[step].receipt
        assert len(ev.positions) == min(positions, r.num_tokens)
        assert all(r.start_pos <= p < r.start_pos + r.num_tokens for p in ev.positions)
        assert ev.layer_errors is not None and ev.prefix_errors is not None and ev.end_error is not None
        assert len(ev.layer_errors) == 2 and len(ev.layer_hashes) == 2
        # honest fp32 noise (node at 1 thread, verifier at its own), far under the per-layer tolerance
        assert max(max(row) for row in ev.layer_errors) < LAYER_TOLERANCE / 5
        assert ev.end_error < 1e-5


def test_wrong_weights_are_located_in_the_shards_first_layer(swarms: Swarms) -> None:
    records = swarms.of(swarms.records_a, 1)
    ev = TraceAuditor().challenge(swarms.shards[1], records, 0)
    assert ev.status == "located" and ev.failing, ev.detail
    assert ev.layer == 2  # every weight is perturbed: the very first layer of shard 1 is already off
    assert ev.layer_errors is not None and ev.layer_errors[0][0] > 100 * LAYER_TOLERANCE
    assert ev.end_error is not None and ev.end_tolerance is not None and ev.end_error <= ev.end_tolerance
    assert ev.position == ev.positions[0]


def test_a_skipped_layer_is_located_in_the_shards_last_layer(swarms: Swarms) -> None:
    records = swarms.of(swarms.records_b, 0)
    ev = TraceAuditor().challenge(swarms.shards[0], records, 1)
    assert ev.status == "located", ev.detail
    assert ev.layer == 1  # layer 0 was computed honestly; layer 1's claimed output is its input unchanged
    assert ev.layer_errors is not None
    assert ev.layer_errors[0][0] < LAYER_TOLERANCE < ev.layer_errors[1][0]
    assert "layer 1" in ev.summary()


def _resigning_post(key: bytes, change_last: bool) -> Any:
    """A transport that rewrites the node's answer and signs it again with ``key``."""

    def post(url: str, body: bytes, timeout_s: float) -> bytes:
        resp, frames = decode_trace_response(http_post(url, body, timeout_s))
        if change_last:
            last = decode_tensor(frames[-1], max_bytes=1 << 24)
            frames[-1] = encode_tensor(last * 1.01)
        hashes = ["0x" + hashlib.sha256(f).hexdigest() for f in frames]
        req, _ = decode_trace_request(body)
        signature = sign_claim(trace_digest(req, resp.layer_start, hashes), key)
        out = TraceResponse(layer_start=resp.layer_start, layer_hashes=hashes, frame_bytes=[len(f) for f in frames],
                            signature=signature)
        return encode_trace_response(out, frames)

    return post


def test_a_transcript_that_does_not_end_at_the_signed_output_is_rejected(swarms: Swarms) -> None:
    """Signed by the node itself, but its last layer is not the output its receipt signed."""
    node = swarms.a.nodes[0]
    key = load_keystore(node.key_file, DEVNET_PASSWORD)
    records = swarms.of(swarms.records_a, 0)
    ev = TraceAuditor(post=_resigning_post(key, change_last=True)).challenge(swarms.shards[0], records, 1)
    assert ev.status == "invalid" and ev.failing
    assert "does not end at the receipt's output" in ev.detail


def test_a_transcript_signed_by_another_key_is_rejected(swarms: Swarms) -> None:
    records = swarms.of(swarms.records_a, 0)
    ev = TraceAuditor(post=_resigning_post(os.urandom(32), change_last=False)).challenge(swarms.shards[0], records, 1)
    assert ev.status == "invalid" and "signed by" in ev.detail

    def altered(url: str, body: bytes, timeout_s: float) -> bytes:  # a frame changed, its hash not
        raw = bytearray(http_post(url, body, timeout_s))
        raw[-1] ^= 1
        return bytes(raw)

    ev = TraceAuditor(post=altered).challenge(swarms.shards[0], records, 1)
    assert ev.status == "invalid" and "layer_hashes" in ev.detail


def test_no_trace_within_the_deadline_counts_as_failing(swarms: Swarms) -> None:
    records = swarms.of(swarms.records_a, 0)
    gone = [HopRecord(r.receipt, "http://127.0.0.1:9", r.node_address, r.input_frame, r.output_frame) for r in records]
    ev = TraceAuditor(deadline_s=5.0).challenge(swarms.shards[0], gone, 1)
    assert ev.status == "missing" and ev.failing and "no trace within" in ev.detail
    # A node that accepts the connection and never answers (the tiny model traces in ~1 ms, so a short
    # deadline on the real node would not time out reliably).
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        mute = [HopRecord(r.receipt, f"http://127.0.0.1:{port}", r.node_address, r.input_frame, r.output_frame)
                for r in records]
        slow = TraceAuditor(deadline_s=0.5).challenge(swarms.shards[0], mute, 1)
    assert slow.status == "missing" and slow.failing and "no trace within 0.5s" in slow.detail


def test_the_trace_endpoint_refuses_bad_requests(swarms: Swarms) -> None:
    records = swarms.of(swarms.records_a, 0)
    url = swarms.a.urls[0] + TRACE_PATH
    frames = [r.input_frame for r in records[:3]]
    r2 = records[2].receipt
    good = TraceRequest(manifest_hash=r2.manifest_hash, shard=0, session_id=r2.session_id, step=2,
                        receipt_id=r2.receipt_id(), positions=[r2.start_pos],
                        input_hashes=[r.receipt.input_hash for r in records[:3]], frame_bytes=[len(f) for f in frames],
                        nonce="0x" + os.urandom(32).hex())

    def post(body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, dict[str, str]]]:
        req = urllib.request.Request(url, data=body, method="POST",
                                     headers={VERSION_HEADER: PROTOCOL_VERSION} if headers is None else headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, {}
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    assert post(encode_trace_request(good, frames))[0] == 200
    narrow = encode_tensor(torch.zeros(1, 2, 7))
    wrong_shape = good.model_copy(update={"step": 0, "input_hashes": ["0x" + hashlib.sha256(narrow).hexdigest()],
                                          "frame_bytes": [len(narrow)], "positions": [0]})
    cases: list[tuple[bytes, dict[str, str] | None, int, str, str]] = [
        (encode_trace_request(good, frames), {}, 400, "protocol_version", ""),
        (b"junk", None, 400, "bad_frame", ""),
        (encode_trace_request(good.model_copy(update={"input_hashes": good.input_hashes[::-1]}), frames), None, 400,
         "bad_frame", "does not hash"),
        (encode_trace_request(good.model_copy(update={"shard": 1}), frames), None, 409, "wrong_shard", ""),
        (encode_trace_request(good.model_copy(update={"positions": [0]}), frames), None, 400, "bad_request", "not in step 2"),
        (encode_trace_request(good.model_copy(update={"positions": [10_000]}), frames), None, 400, "bad_request",
         "not in step 2"),
        (encode_trace_request(good.model_copy(update={"positions": [r2.start_pos, r2.start_pos]}), frames), None, 400,
         "bad_request", "strictly increasing"),
        (encode_trace_request(good.model_copy(update={"step": 1}), frames), None, 400, "bad_request", "steps 0..1"),
        (encode_trace_request(wrong_shape, [narrow]), None, 422, "bad_shape", "shape"),
    ]
    for body, headers, status, code, words in cases:
        got, answer = post(body, headers)
        assert (got, answer["error"]["code"]) == (status, code), answer
        assert words in answer["error"]["message"] and "\n" not in answer["error"]["message"]


def test_the_audit_traces_then_proves_a_slice_of_the_located_layer(swarms: Swarms, tmp_path: Path) -> None:
    """The whole dispute: re-execution fails the wrong-weights node, the trace locates layer 2, the proof
    challenge targets a slice of layer 2 (a random draw could have picked layer 3), and the verdict and the
    ledger's slash evidence carry the located layer, the numbers and the signed transcript."""
    h = swarms.md.manifest.hash
    specs = [SliceSpec(h, 0, 0, "self_attn.q_proj", 0), SliceSpec(h, 1, 2, "self_attn.q_proj", 16),
             SliceSpec(h, 1, 3, "mlp.up_proj", 0)]
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.create_schema()
    verifier = Verifier(swarms.md, ledger=ledger, config=VerifierConfig(audit_rate=1.0, zk_sample_rate=0.0),
                        zk=ZkAuditor.for_slices(swarms.md, specs, config=swarms.config))
    for rec in swarms.records_a:
        verifier.submit(rec)
    verdicts = {v.shard_index: v for v in verifier.audit_due(force=True)}
    assert verdicts[0].passed and not verdicts[1].passed
    assert (verifier.stats["traces"], verifier.stats["traces_located"]) == (1, 1)
    [entry] = [v for v in verifier.verdicts if v.get("shard") == 1]
    trace, zk = entry["trace"], entry["zk"]
    assert isinstance(trace, dict) and isinstance(zk, dict)
    assert trace["status"] == "located" and trace["layer"] == 2 and "frames" not in trace
    assert trace["layer_errors"][0][0] > trace["tolerance"]
    assert zk["slice"]["layer"] == 2 and zk["trace_layer"] == 2 and zk["token"] == trace["position"]
    assert zk["status"] == "invalid"
    assert "fault located in layer 2" in str(entry["summary"])
    [slash] = ledger.slashes()
    with ledger._sessions() as s:
        row = s.get(SlashRow, slash["id"])
        assert row is not None
        detail = row.detail
    assert detail["trace"]["layer"] == 2 and len(detail["trace"]["frames"]) == 2
    assert detail["trace"]["signature"] == trace["signature"]


def test_with_no_slice_registered_in_the_located_layer_one_is_registered(swarms: Swarms) -> None:
    """The skip-layer node: located in layer 1, where the menu has no slice; the auditor registers one of
    layer 1 (vk from the committed artifact) and targets it."""
    h = swarms.md.manifest.hash
    auditor = ZkAuditor.for_slices(swarms.md, [SliceSpec(h, 0, 0, "self_attn.q_proj", 0)], config=swarms.config)
    records = swarms.of(swarms.records_b, 0)
    assert auditor.tracer is not None
    trace = auditor.tracer.challenge(swarms.shards[0], records, 0)
    assert trace.status == "located" and trace.layer == 1
    drawn = auditor.draw(records, 0, layer=trace.layer, token=trace.position)
    assert drawn is not None and drawn[0].layer == 1 and drawn[1] == trace.position
    assert any(e.spec.layer == 1 for e in auditor.registry)
