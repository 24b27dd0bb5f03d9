"""Server-to-server relay between real node processes: each node hands its output to the next and only
the last answers the client, with every hop's signed receipt carried along.

Relay and client-mediated paths must give bitwise-identical logits (the nodes compute the same thing on
the same bytes); a node killed mid-generation must not change the greedy text; a relay that drops or
alters a receipt must be caught; and a relayed step from anyone but the authorised upstream is refused.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import torch
from aiohttp.test_utils import TestServer

from veriswarm.client import AsyncClient
from veriswarm.client.sdk import Generation
from veriswarm.deploy.local import LocalSwarm
from veriswarm.frames import encode_tensor
from veriswarm.protocol import (
    PROTOCOL_VERSION,
    VERSION_HEADER,
    ErrorReply,
    HopOrder,
    Opened,
    OpenSession,
    RelayStep,
    StepRequest,
    StepResult,
    decode_reply,
    encode_envelope,
)
from veriswarm.receipts import Receipt, ReceiptDomain, hex32
from veriswarm.sinks import MemorySink

from ..adversaries.tampering import make_tamper_app

PROMPT = [21, 22, 23, 24, 25, 26, 27]
TOKENS = 16


@pytest.fixture(scope="module")
def three_shards(tiny_hf, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    from veriswarm.split.partition import split_model

    out = tmp_path_factory.mktemp("tiny-3")
    split_model(tiny_hf[2], 3, out)
    return out


@pytest.fixture(scope="module")
def swarm(three_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSwarm]:
    s = LocalSwarm(model_dir=three_shards, workdir=tmp_path_factory.mktemp("relay-swarm"), replicas=2, torch_threads=1)
    s.start()
    yield s
    s.stop()


def _one_replica(swarm: LocalSwarm) -> list[str]:
    return [next(n.url for n in swarm.nodes if n.shard == i) for i in range(3)]


async def test_relay_and_client_mediated_give_identical_logits(swarm: LocalSwarm, three_shards: Path) -> None:
    urls = _one_replica(swarm)
    runs = {}
    for relay in (True, False):
        sink = MemorySink()
        async with AsyncClient(three_shards, urls, relay=relay, sink=sink) as client:
            gen = await client.generate_ids(PROMPT, max_new_tokens=TOKENS, ignore_eos=True, return_logits=True)
        runs[relay] = (gen, sink)
    (relayed, relayed_sink), (direct, direct_sink) = runs[True], runs[False]
    assert relayed.relayed_steps == TOKENS and direct.relayed_steps == 0
    assert relayed.token_ids == direct.token_ids
    for a, b in zip(relayed.step_logits, direct.step_logits, strict=True):
        assert torch.equal(a, b)
    # The client saw, checked and passed on every hop's receipt either way: 3 hops per step.
    assert len(relayed_sink.records) == len(direct_sink.records) == 3 * TOKENS
    assert [(r.receipt.shard_index, r.receipt.step) for r in relayed_sink.records] == \
        [(r.receipt.shard_index, r.receipt.step) for r in direct_sink.records]


async def test_kills_mid_generation_under_relay_keep_the_text(swarm: LocalSwarm, three_shards: Path) -> None:
    rng = random.Random(99)
    async with AsyncClient(three_shards, swarm.urls, timeout_s=10) as client:
        client.router.ban_base_s = 0.5
        reference = await client.generate_ids(PROMPT, max_new_tokens=TOKENS, ignore_eos=True)
        assert reference.relayed_steps == TOKENS
        for trial in range(int(os.environ.get("VERISWARM_RELAY_KILLS", "4"))):
            kill_at, shard = rng.randrange(1, TOKENS - 3), rng.randrange(3)
            gen = Generation("", [], len(PROMPT), "length", [])
            victim = None
            async for i, _ in _enumerate(client.stream_ids(PROMPT, max_new_tokens=TOKENS, ignore_eos=True, into=gen)):
                if i == kill_at:
                    victim = next(n for n in swarm.nodes if n.url == gen.route[shard])
                    swarm.kill(victim, signal.SIGKILL)
            assert gen.token_ids == reference.token_ids, f"trial {trial}: text diverged after a kill at {kill_at}"
            assert victim is not None and [f.shard for f in gen.failovers] == [shard]
            # The replica was re-pointed into the relay: steps after the failover went node to node again.
            assert gen.relayed_steps >= TOKENS - 2, gen.relayed_steps
            swarm.respawn(victim)
            client.router.pardon(victim.url)


async def _enumerate(it):  # type: ignore[no-untyped-def]
    i = 0
    async for item in it:
        yield i, item
        i += 1


@pytest.mark.parametrize("mode", ["drop_receipt", "flip_output", "resign"])
async def test_a_relay_that_drops_or_alters_a_receipt_is_caught(swarm: LocalSwarm, three_shards: Path, mode: str) -> None:
    urls = _one_replica(swarm)
    async with AsyncClient(three_shards, urls, relay=False) as client:
        reference = await client.generate_ids(PROMPT, max_new_tokens=6, ignore_eos=True)
    async with TestServer(make_tamper_app(urls[2], mode)) as proxy:
        sink = MemorySink()
        lying = str(proxy.make_url("")).rstrip("/")
        async with AsyncClient(three_shards, [urls[0], urls[1], lying], sink=sink, timeout_s=10) as client:
            if mode == "drop_receipt":
                # Only the relayed chain is cut short; answers asked for directly are honest, so the client
                # turns relay off for the session and finishes with the same text.
                gen = await client.generate_ids(PROMPT, max_new_tokens=6, ignore_eos=True)
                assert gen.token_ids == reference.token_ids
                assert gen.relayed_steps == 0
            else:
                with pytest.raises(Exception, match="no live replica left for shard 2"):
                    await client.generate_ids(PROMPT, max_new_tokens=6, ignore_eos=True)
    # Nothing that failed the check was passed on: every record is the honest one for its hop and step.
    honest = {(r.receipt.shard_index, r.receipt.step): r.receipt.output_hash for r in sink.records}
    assert len(honest) == len(sink.records)
    assert all(r.receipt.shard_index < 2 or r.node_url == lying for r in sink.records)
    if mode != "drop_receipt":
        assert not [r for r in sink.records if r.node_url == lying]


async def test_relayed_steps_only_from_the_authorised_upstream(swarm: LocalSwarm, three_shards: Path) -> None:
    """A stranger who knows a session id cannot push steps into it: with no receipts it is not the owner,
    and receipts it signs itself are not from the upstream the client named."""
    urls = _one_replica(swarm)
    info = []
    async with aiohttp.ClientSession() as http:
        for url in urls:
            async with http.get(url + "/v1/info") as resp:
                info.append(await resp.json())
        session_id, manifest = hex32(os.urandom(32)), info[0]["manifest_hash"]
        headers = {VERSION_HEADER: PROTOCOL_VERSION}
        owner = await http.ws_connect(urls[1].replace("http", "ws") + "/v1/ws", headers=headers)
        stranger = await http.ws_connect(urls[1].replace("http", "ws") + "/v1/ws", headers=headers)
        await owner.send_bytes(encode_envelope(OpenSession(manifest_hash=manifest, shard_index=1, session_id=session_id,
                                                           max_length=32, upstream=info[0]["address"])))
        assert isinstance(decode_reply((await owner.receive()).data)[0], Opened)
        frame = encode_tensor(torch.randn(1, 2, 64))

        def order(shard: int) -> HopOrder:
            return HopOrder(shard_index=shard, url=urls[shard], address=info[shard]["address"], step=0, start_pos=0,
                            request_nonce=hex32(os.urandom(32)))

        # 1. As if it were the first hop: no receipts, but not the session's owner.
        await stranger.send_bytes(encode_envelope(RelayStep(session_id=session_id, orders=[order(1), order(2)],
                                                            receipts=[], frame_sizes=[len(frame)]), frame))
        pushed, _ = decode_reply((await owner.receive(timeout=10)).data)
        assert isinstance(pushed, ErrorReply) and pushed.code == "relay_failed" and "owner" in pushed.message
        # 2. With a receipt it signed itself for a fake shard 0.
        key = os.urandom(32)
        forged_order = order(0).model_copy(update={"address": _address(key)})
        out = encode_tensor(torch.randn(1, 2, 64))
        from veriswarm.frames import sha256
        fake = Receipt(manifest_hash=manifest, shard_index=0, session_id=session_id, step=0, start_pos=0, num_tokens=2,
                       input_hash=hex32(sha256(frame)), context_hash=hex32(b"\0" * 32), output_hash=hex32(sha256(out)),
                       request_nonce=forged_order.request_nonce, timestamp_ms=1).signed(
            key, ReceiptDomain(info[0]["chain_id"], info[0]["verifying_contract"]))
        await stranger.send_bytes(encode_envelope(RelayStep(
            session_id=session_id, orders=[forged_order, order(1)], receipts=[fake.to_json()],
            frame_sizes=[len(frame), len(out)]), frame + out))
        pushed, _ = decode_reply((await owner.receive(timeout=10)).data)
        assert isinstance(pushed, ErrorReply) and pushed.code == "relay_failed" and "upstream" in pushed.message
        # 3. For a session this node does not have: the answer goes back to the sender (a relaying node
        #    passes it on to its own client at once, instead of leaving it to time out).
        unknown = hex32(os.urandom(32))
        await stranger.send_bytes(encode_envelope(RelayStep(session_id=unknown, orders=[order(1)], receipts=[],
                                                            frame_sizes=[len(frame)]), frame))
        back, _ = decode_reply((await stranger.receive(timeout=10)).data)
        assert isinstance(back, ErrorReply) and back.code == "unknown_session" and back.session_id == unknown
        # Nothing was computed: the owner's own step 0 is still the next one.
        await owner.send_bytes(encode_envelope(StepRequest(session_id=session_id, step=0, start_pos=0,
                                                           request_nonce=hex32(os.urandom(32))), frame))
        reply, _ = decode_reply((await owner.receive(timeout=10)).data)
        assert isinstance(reply, StepResult) and reply.receipt["step"] == 0
        await asyncio.gather(owner.close(), stranger.close())


def _address(key: bytes) -> str:
    from veriswarm.receipts import address_of

    return address_of(key)
