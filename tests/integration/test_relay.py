"""Server-to-server relay between real node processes: each node hands its output to the next, then
pushes its signed receipt (and output frame) to the client, which checks the chain hop by hop.

Relay and client-mediated paths must give bitwise-identical logits (the nodes compute the same thing on
the same bytes); a node killed mid-generation must not change the greedy text; a relay that withholds or
alters a receipt must be caught; and a relayed step from anyone but the authorised upstream, over a link
that proved its key, is refused.
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
    LinkAccepted,
    LinkChallenge,
    LinkHello,
    LinkProof,
    Opened,
    OpenSession,
    RelayStep,
    StepRequest,
    StepResult,
    decode_reply,
    encode_envelope,
    encode_relay_tick,
    link_digest,
)
from veriswarm.receipts import hex32, sign_digest
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


async def _relay_counts(urls: list[str]) -> list[tuple[float, float]]:
    """(full relayed steps, relay ticks) each node has taken, from its Prometheus metrics."""
    counts = []
    async with aiohttp.ClientSession() as http:
        for url in urls:
            async with http.get(url + "/metrics") as resp:
                text = await resp.text()
            found = {kind: 0.0 for kind in ("relay", "relay_tick")}
            for line in text.splitlines():
                for kind in found:
                    if line.startswith(f'veriswarm_node_requests_total{{kind="{kind}"}}'):
                        found[kind] = float(line.split()[-1])
            counts.append((found["relay"], found["relay_tick"]))
    return counts


async def test_relay_and_client_mediated_give_identical_logits(swarm: LocalSwarm, three_shards: Path) -> None:
    urls = _one_replica(swarm)
    runs = {}
    before = await _relay_counts(urls)
    for relay in (True, False):
        sink = MemorySink()
        async with AsyncClient(three_shards, urls, relay=relay, sink=sink) as client:
            gen = await client.generate_ids(PROMPT, max_new_tokens=TOKENS, ignore_eos=True, return_logits=True)
        runs[relay] = (gen, sink)
    (relayed, relayed_sink), (direct, direct_sink) = runs[True], runs[False]
    assert relayed.relayed_steps == TOKENS and direct.relayed_steps == 0
    # The first relayed step (the prefill) pins the route on every node; every later one is a tick.
    after = await _relay_counts(urls)
    assert [(a[0] - b[0], a[1] - b[1]) for a, b in zip(after, before, strict=True)] == [(1, TOKENS - 1)] * 3
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
    # Withheld receipts are tested on the middle hop (the chain's result still arrives, its receipt does
    # not); altered outputs on the last hop, whose answers the client uses.
    shard = 1 if mode == "drop_receipt" else 2
    async with TestServer(make_tamper_app(urls[shard], mode)) as proxy:
        sink = MemorySink()
        lying = str(proxy.make_url("")).rstrip("/")
        route = [lying if i == shard else u for i, u in enumerate(urls)]
        async with AsyncClient(three_shards, route, sink=sink, timeout_s=10) as client:
            if mode == "drop_receipt":
                # Only relayed receipts are withheld; answers asked for directly are honest, so the client
                # turns relay off for the session (after one step) and finishes with the same text.
                gen = await client.generate_ids(PROMPT, max_new_tokens=6, ignore_eos=True)
                assert gen.token_ids == reference.token_ids
                assert gen.relayed_steps == 0
            else:
                with pytest.raises(Exception, match="no live replica left for shard 2"):
                    await client.generate_ids(PROMPT, max_new_tokens=6, ignore_eos=True)
    # Nothing that failed the check was passed on: every record is the honest one for its hop and step.
    honest = {(r.receipt.shard_index, r.receipt.step): r.receipt.output_hash for r in sink.records}
    assert len(honest) == len(sink.records)
    assert all(r.receipt.shard_index != shard or r.node_url == lying for r in sink.records)
    if mode != "drop_receipt":
        assert not [r for r in sink.records if r.node_url == lying]


async def test_relayed_steps_only_from_the_authorised_upstream(swarm: LocalSwarm, three_shards: Path) -> None:
    """A stranger who knows a session id cannot push steps into it: as hop 0 it is not the owner; as a later
    hop it must come over a relay link that proved the key of the upstream the client named, and a link
    proof is one signature over this node's fresh challenge (not replayable, not forgeable)."""
    urls = _one_replica(swarm)
    info = []
    async with aiohttp.ClientSession() as http:
        for url in urls:
            async with http.get(url + "/v1/info") as resp:
                info.append(await resp.json())
        session_id, manifest = hex32(os.urandom(32)), info[0]["manifest_hash"]
        headers = {VERSION_HEADER: PROTOCOL_VERSION}
        ws_url = urls[1].replace("http", "ws") + "/v1/ws"
        owner = await http.ws_connect(ws_url, headers=headers)
        stranger = await http.ws_connect(ws_url, headers=headers)
        await owner.send_bytes(encode_envelope(OpenSession(manifest_hash=manifest, shard_index=1, session_id=session_id,
                                                           max_length=32, upstream=info[0]["address"])))
        assert isinstance(decode_reply((await owner.receive()).data)[0], Opened)
        frame = encode_tensor(torch.randn(1, 2, 64))

        def order(shard: int) -> HopOrder:
            return HopOrder(shard_index=shard, url=urls[shard], address=info[shard]["address"], step=0, start_pos=0,
                            request_nonce=hex32(os.urandom(32)))

        async def pushed_error() -> ErrorReply:
            reply, _ = decode_reply((await owner.receive(timeout=10)).data)
            assert isinstance(reply, ErrorReply), reply
            return reply

        async def ask(ws: aiohttp.ClientWebSocketResponse, message: object) -> object:
            await ws.send_bytes(encode_envelope(message))  # type: ignore[arg-type]
            return decode_reply((await ws.receive(timeout=10)).data)[0]

        # 1. As if it were the first hop: not the session's owner.
        await stranger.send_bytes(encode_envelope(RelayStep(session_id=session_id, orders=[order(1), order(2)],
                                                            hop=0), frame))
        err = await pushed_error()
        assert err.code == "relay_failed" and "owner" in err.message
        # 2. As hop 1 over a link that never authenticated.
        chain = [order(0), order(1), order(2)]
        await stranger.send_bytes(encode_envelope(RelayStep(session_id=session_id, orders=chain, hop=1), frame))
        err = await pushed_error()
        assert err.code == "relay_failed" and "never authenticated" in err.message
        # 3. Link proofs: without a challenge, for someone else's challenge, replayed, or signed for another
        #    address are refused; a proof of its own key is accepted, but that key is not the upstream.
        key = os.urandom(32)
        me = _address(key)
        refused = await ask(stranger, LinkProof(address=me, signature="0x" + "11" * 65))
        assert isinstance(refused, ErrorReply) and "challenge" in refused.message
        challenge = await ask(stranger, LinkHello())
        assert isinstance(challenge, LinkChallenge) and challenge.address.lower() == info[1]["address"].lower()
        wrong = await ask(stranger, LinkProof(address=me, signature=sign_digest(key, link_digest(info[2]["address"],
                                                                                                   challenge.nonce))))
        assert isinstance(wrong, ErrorReply) and wrong.code == "forbidden"
        replayed = await ask(stranger, LinkProof(address=me, signature=sign_digest(key, link_digest(
            challenge.address, challenge.nonce))))
        assert isinstance(replayed, ErrorReply) and "challenge" in replayed.message  # that challenge is used up
        challenge = await ask(stranger, LinkHello())
        assert isinstance(challenge, LinkChallenge)
        claimed = await ask(stranger, LinkProof(address=info[0]["address"], signature=sign_digest(key, link_digest(
            challenge.address, challenge.nonce))))
        assert isinstance(claimed, ErrorReply) and claimed.code == "forbidden" and "not by" in claimed.message
        challenge = await ask(stranger, LinkHello())
        assert isinstance(challenge, LinkChallenge)
        accepted = await ask(stranger, LinkProof(address=me, signature=sign_digest(key, link_digest(
            challenge.address, challenge.nonce))))
        assert isinstance(accepted, LinkAccepted) and accepted.address.lower() == me.lower()
        await stranger.send_bytes(encode_envelope(RelayStep(session_id=session_id, orders=chain, hop=1), frame))
        err = await pushed_error()
        assert err.code == "relay_failed" and "upstream" in err.message and me.lower() in err.message
        # 4. For a session this node does not have: the answer goes back to the sender (a relaying node
        #    passes it on to its own client at once, instead of leaving it to time out).
        unknown = hex32(os.urandom(32))
        await stranger.send_bytes(encode_envelope(RelayStep(session_id=unknown, orders=[order(1)], hop=0), frame))
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


async def test_relay_ticks_only_on_a_pinned_route(swarm: LocalSwarm, three_shards: Path) -> None:
    """A tick orders a step on the route a full relayed step pinned: with none pinned (or another hop's) it
    is refused, and pushed to the owner as relay_failed; a malformed tick is answered on its own connection.
    Either way nothing is computed, and the node keeps serving the session."""
    urls = _one_replica(swarm)
    async with aiohttp.ClientSession() as http:
        async with http.get(urls[0] + "/v1/info") as resp:
            info = await resp.json()
        session_id = hex32(os.urandom(32))
        owner = await http.ws_connect(urls[0].replace("http", "ws") + "/v1/ws", headers={VERSION_HEADER: PROTOCOL_VERSION})
        await owner.send_bytes(encode_envelope(OpenSession(manifest_hash=info["manifest_hash"], shard_index=0,
                                                           session_id=session_id, max_length=32)))
        assert isinstance(decode_reply((await owner.receive()).data)[0], Opened)
        frame = encode_tensor(torch.randn(1, 2, 64))
        nonces = [hex32(os.urandom(32)) for _ in range(3)]

        async def answer() -> ErrorReply:
            reply, _ = decode_reply((await owner.receive(timeout=10)).data)
            assert isinstance(reply, ErrorReply), reply
            return reply

        await owner.send_bytes(encode_relay_tick(session_id, 0, [0, 0, 0], nonces) + frame)
        err = await answer()
        assert err.code == "relay_failed" and "route pinned here is none" in err.message and err.step == 0
        await owner.send_bytes(encode_relay_tick(session_id, 0, [0, 0, 0], nonces)[:50])
        err = await answer()
        assert err.code == "bad_frame" and "relay tick truncated" in err.message
        # Nothing was computed: the owner's own step 0 is still the next one.
        await owner.send_bytes(encode_envelope(StepRequest(session_id=session_id, step=0, start_pos=0,
                                                           request_nonce=nonces[0]), frame))
        reply, _ = decode_reply((await owner.receive(timeout=10)).data)
        assert isinstance(reply, StepResult) and reply.receipt["step"] == 0
        await owner.close()
