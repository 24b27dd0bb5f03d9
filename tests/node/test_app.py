"""The node's HTTP and WebSocket surface on a real socket: happy paths and every bad input."""

from __future__ import annotations

import asyncio
import os
import struct
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer

from veriswarm.frames import decode_tensor, encode_tensor, sha256
from veriswarm.manifest import ModelDir
from veriswarm.node.app import STATE, make_app
from veriswarm.node.config import NodeConfig
from veriswarm.protocol import (
    PROTOCOL_VERSION,
    VERSION_HEADER,
    CloseSession,
    ErrorReply,
    ForwardRequest,
    Opened,
    OpenSession,
    StepRequest,
    StepResult,
    decode_reply,
    encode_envelope,
)
from veriswarm.receipts import Receipt, ReceiptDomain, address_of, context_seed, hex32, next_context
from veriswarm.split.artifacts import load_shard

KEY = bytes.fromhex("11" * 32)
V = {VERSION_HEADER: PROTOCOL_VERSION}


def rid() -> str:
    return hex32(os.urandom(32))


@pytest.fixture
async def node(tiny_dir: Path) -> AsyncIterator[TestClient]:
    async for client in _node(tiny_dir, inline_decode=True):
        yield client


@pytest.fixture(params=[True, False], ids=["inline-decode", "worker-decode"])
async def either_node(tiny_dir: Path, request: pytest.FixtureRequest) -> AsyncIterator[TestClient]:
    """The node with decode steps run on its event loop (the default) or in its worker thread."""
    async for client in _node(tiny_dir, inline_decode=request.param):
        yield client


async def _node(tiny_dir: Path, *, inline_decode: bool) -> AsyncIterator[TestClient]:
    md = ModelDir.open(tiny_dir)
    cfg = NodeConfig(model_dir=tiny_dir, shard=1, max_body_bytes=200_000, max_sessions=3, max_length=64,
                     session_idle_timeout_s=0.4, inline_decode=inline_decode)
    app = make_app(config=cfg, manifest=md.manifest, shard=load_shard(md, 1), private_key=KEY)
    async with TestClient(TestServer(app)) as client:
        client.manifest_hash = md.manifest.hash  # type: ignore[attr-defined]
        client.shard = load_shard(md, 1)  # type: ignore[attr-defined]
        yield client


def hidden(t: int = 3) -> torch.Tensor:
    return torch.randn(1, t, 64)


async def forward(node: TestClient, frame: bytes, **kw: object) -> aiohttp.ClientResponse:
    header = ForwardRequest(**{"manifest_hash": node.manifest_hash, "shard_index": 1, "session_id": rid(),  # type: ignore[attr-defined]
                               "request_nonce": rid(), **kw})
    return await node.post("/v1/forward", data=encode_envelope(header, frame), headers=V)


async def test_info_health_metrics(node: TestClient) -> None:
    info = await (await node.get("/v1/info")).json()
    assert info["shard_index"] == 1 and info["layer_start"] == 2 and info["layer_end"] == 4
    assert info["address"] == address_of(KEY) and info["manifest_hash"] == node.manifest_hash  # type: ignore[attr-defined]
    assert (await node.get("/health")).status == 200
    await forward(node, encode_tensor(hidden()))
    text = await (await node.get("/metrics")).text()
    assert "veriswarm_node_tokens_total 3.0" in text


async def test_forward_returns_the_shard_output_with_a_signed_receipt(node: TestClient) -> None:
    x = hidden(5)
    frame = encode_tensor(x)
    resp = await forward(node, frame)
    assert resp.status == 200
    reply, payload = decode_reply(await resp.read())
    assert isinstance(reply, StepResult)
    out = decode_tensor(payload, max_bytes=1 << 20)
    assert torch.equal(out, node.shard(x))  # type: ignore[attr-defined]
    r = Receipt.from_json(reply.receipt)
    assert r.signer(ReceiptDomain()) == address_of(KEY)
    assert r.input_hash == hex32(sha256(frame)) and r.output_hash == hex32(sha256(bytes(payload)))
    assert r.num_tokens == 5 and r.shard_index == 1


async def _error(resp: aiohttp.ClientResponse) -> tuple[int, str]:
    body = await resp.json()
    assert "\n" not in body["error"]["message"]
    return resp.status, body["error"]["code"]


async def test_bad_http_inputs_get_4xx_and_the_node_keeps_serving(node: TestClient) -> None:
    good = encode_tensor(hidden())
    cases = [
        (await forward(node, encode_tensor(torch.randn(1, 3, 63))), (422, "bad_shape")),
        (await forward(node, encode_tensor(torch.randn(2, 3, 64))), (422, "bad_shape")),
        (await forward(node, encode_tensor(torch.randn(3, 64))), (422, "bad_shape")),
        (await forward(node, encode_tensor(torch.randn(1, 0, 64))), (422, "bad_shape")),
        (await forward(node, encode_tensor(torch.randint(0, 5, (1, 3, 64), dtype=torch.int8))), (422, "bad_dtype")),
        (await forward(node, good[:-3]), (400, "bad_frame")),
        (await forward(node, good, manifest_hash="0x" + "00" * 32), (409, "manifest_mismatch")),
        (await forward(node, good, shard_index=0), (409, "wrong_shard")),
        (await forward(node, encode_tensor(torch.randn(1, 65, 64))), (422, "context_overflow")),
        (await node.post("/v1/forward", data=b"VSW1" + struct.pack("<I", 3) + b"{x}", headers=V), (400, "bad_json")),
        (await node.post("/v1/forward", data=b"garbage", headers=V), (400, "bad_frame")),
        (await node.post("/v1/forward", data=encode_envelope(CloseSession(session_id=rid())), headers=V),
         (400, "bad_request")),
        (await node.post("/v1/forward", data=good), (400, "protocol_version")),
        (await node.post("/v1/forward", data=good, headers={VERSION_HEADER: "0"}), (400, "protocol_version")),
        (await node.post("/v1/forward", data=b"\0" * 400_000, headers=V), (413, "too_large")),
    ]
    for resp, want in cases:
        assert await _error(resp) == want
    assert (await forward(node, good)).status == 200  # still serving
    assert (await node.get("/nope")).status == 404


async def _ws(node: TestClient) -> aiohttp.ClientWebSocketResponse:
    return await node.ws_connect("/v1/ws", headers=V)


async def _send(ws: aiohttp.ClientWebSocketResponse, header: object, payload: bytes = b"") -> tuple[object, bytes]:
    await ws.send_bytes(encode_envelope(header, payload))  # type: ignore[arg-type]
    msg = await ws.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.BINARY, msg
    reply, data = decode_reply(msg.data)
    return reply, bytes(data)


def _open(node: TestClient, sid: str, max_length: int = 32) -> OpenSession:
    return OpenSession(manifest_hash=node.manifest_hash, shard_index=1, session_id=sid, max_length=max_length)  # type: ignore[attr-defined]


async def test_session_decode_equals_full_recompute_and_receipts_chain(either_node: TestClient) -> None:
    node = either_node
    ws = await _ws(node)
    sid = rid()
    reply, _ = await _send(ws, _open(node, sid))
    assert isinstance(reply, Opened)
    x = hidden(10)
    full = node.shard(x)  # type: ignore[attr-defined]
    ctx = context_seed(node.manifest_hash, 1, sid)  # type: ignore[attr-defined]
    outs = []
    for step, (a, b) in enumerate([(0, 6), (6, 7), (7, 8), (8, 10)]):
        frame = encode_tensor(x[:, a:b].contiguous())
        reply, payload = await _send(ws, StepRequest(session_id=sid, step=step, start_pos=a, request_nonce=rid()), frame)
        assert isinstance(reply, StepResult)
        r = Receipt.from_json(reply.receipt)
        ctx = next_context(ctx, sha256(frame))
        assert r.context_hash == hex32(ctx) and r.step == step and r.start_pos == a
        outs.append(decode_tensor(payload, max_bytes=1 << 20))
    assert (torch.cat(outs, 1) - full).abs().max().item() < 1e-5
    reply, _ = await _send(ws, CloseSession(session_id=sid))
    assert reply.type == "closed"  # type: ignore[attr-defined]
    await ws.close()


@pytest.mark.parametrize("inline_decode", [True, False], ids=["inline-decode", "worker-decode"])
async def test_prefills_and_decode_steps_run_at_their_own_thread_counts(tiny_dir: Path, inline_decode: bool) -> None:
    """A prefill runs at prefill_threads, a decode step at the process's count, wherever each runs: a
    worker thread does not inherit the main thread's count, so the node must set it for each call."""
    md = ModelDir.open(tiny_dir)
    main = torch.get_num_threads()
    cfg = NodeConfig(model_dir=tiny_dir, shard=1, max_length=64, inline_decode=inline_decode, prefill_threads=main + 1)
    shard = load_shard(md, 1)
    seen: list[int] = []
    threads: list[threading.Thread] = []
    forward = shard.forward

    def recording(x: torch.Tensor, start_pos: int = 0, cache: object = None) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        threads.append(threading.current_thread())
        return forward(x, start_pos, cache)  # type: ignore[arg-type]

    shard.forward = recording  # type: ignore[method-assign]
    app = make_app(config=cfg, manifest=md.manifest, shard=shard, private_key=KEY)
    async with TestClient(TestServer(app)) as node:
        node.manifest_hash = md.manifest.hash  # type: ignore[attr-defined]
        ws = await _ws(node)
        sid = rid()
        await _send(ws, _open(node, sid))
        x = hidden(8)
        for step, (a, b) in enumerate([(0, 6), (6, 7), (7, 8)]):
            reply, _ = await _send(ws, StepRequest(session_id=sid, step=step, start_pos=a, request_nonce=rid()),
                                   encode_tensor(x[:, a:b].contiguous()))
            assert isinstance(reply, StepResult)
        await ws.close()
        threads[0].join(timeout=60)  # a prefill's own thread ends just after handing its result over
        assert not app[STATE].own_threads
    assert seen == [main + 1, main, main]
    assert torch.get_num_threads() == main
    if inline_decode:
        # Decodes on the event loop's thread; the prefill in a thread of its own that has ended (its
        # OpenMP pool with it: see node.app._in_own_thread).
        assert threads[1] is threads[2] is threading.main_thread()
        assert threads[0].name == "shard-prefill" and not threads[0].is_alive()
    else:
        assert all(t.name.startswith("shard-forward") for t in threads)


async def test_bad_session_messages_get_error_replies_and_the_session_survives(node: TestClient) -> None:
    ws = await _ws(node)
    sid = rid()
    await _send(ws, _open(node, sid, max_length=8))

    async def err(header: object, payload: bytes = b"") -> str:
        reply, _ = await _send(ws, header, payload)
        assert isinstance(reply, ErrorReply), reply
        return reply.code

    f3 = encode_tensor(hidden(3))
    assert await err(StepRequest(session_id=rid(), step=0, start_pos=0, request_nonce=rid()), f3) == "unknown_session"
    assert await err(StepRequest(session_id=sid, step=1, start_pos=0, request_nonce=rid()), f3) == "step_out_of_order"
    assert await err(StepRequest(session_id=sid, step=0, start_pos=2, request_nonce=rid()), f3) == "step_out_of_order"
    assert await err(StepRequest(session_id=sid, step=0, start_pos=0, request_nonce=rid()),
                     encode_tensor(hidden(9))) == "context_overflow"
    assert await err(StepRequest(session_id=sid, step=0, start_pos=0, request_nonce=rid()),
                     encode_tensor(torch.randn(1, 3, 32))) == "bad_shape"
    assert await err(_open(node, sid)) == "session_exists"
    assert await err(_open(node, rid()).model_copy(update={"manifest_hash": "0x" + "01" * 32})) == "manifest_mismatch"
    assert await err(_open(node, rid(), max_length=65)) == "context_overflow"
    assert await err(ForwardRequest(manifest_hash=node.manifest_hash, shard_index=1, session_id=rid(),  # type: ignore[attr-defined]
                                    request_nonce=rid()), f3) == "bad_request"
    await ws.send_str("hello")
    assert decode_reply((await ws.receive(timeout=10)).data)[0].code == "bad_frame"  # type: ignore[union-attr]
    await ws.send_bytes(b"VSW1junk")  # "junk" read as the header length: 1.8 GB
    assert decode_reply((await ws.receive(timeout=10)).data)[0].code == "too_large"  # type: ignore[union-attr]
    await ws.send_bytes(b"VSW1" + struct.pack("<I", 2) + b"[]")
    assert decode_reply((await ws.receive(timeout=10)).data)[0].code == "bad_request"  # type: ignore[union-attr]
    # The session is intact after all that: step 0 still works.
    reply, _ = await _send(ws, StepRequest(session_id=sid, step=0, start_pos=0, request_nonce=rid()), f3)
    assert isinstance(reply, StepResult)
    await ws.close()


async def test_sessions_are_private_to_their_connection_and_capped(node: TestClient) -> None:
    a, b = await _ws(node), await _ws(node)
    sid = rid()
    await _send(a, _open(node, sid))
    reply, _ = await _send(b, StepRequest(session_id=sid, step=0, start_pos=0, request_nonce=rid()),
                           encode_tensor(hidden(1)))
    assert isinstance(reply, ErrorReply) and reply.code == "unknown_session"
    await _send(a, _open(node, rid()))
    await _send(a, _open(node, rid()))
    reply, _ = await _send(b, _open(node, rid()))
    assert isinstance(reply, ErrorReply) and reply.code == "capacity"  # max_sessions=3
    await a.close()  # closing the socket releases its sessions
    for _ in range(50):
        if (await (await node.get("/health")).json())["sessions"] == 0:
            break
        await asyncio.sleep(0.05)
    reply, _ = await _send(b, _open(node, rid()))
    assert isinstance(reply, Opened)
    await b.close()


async def test_idle_sessions_expire(node: TestClient) -> None:
    ws = await _ws(node)
    sid = rid()
    await _send(ws, _open(node, sid))
    await asyncio.sleep(1.0)  # idle timeout is 0.4 s
    reply, _ = await _send(ws, StepRequest(session_id=sid, step=0, start_pos=0, request_nonce=rid()),
                           encode_tensor(hidden(1)))
    assert isinstance(reply, ErrorReply) and reply.code == "unknown_session"
    await ws.close()


async def test_oversized_websocket_message_closes_only_that_socket(node: TestClient) -> None:
    ws = await _ws(node)
    await ws.send_bytes(b"\0" * 300_000)
    msg = await ws.receive(timeout=10)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    assert (await forward(node, encode_tensor(hidden()))).status == 200


async def test_websocket_requires_the_protocol_version(node: TestClient) -> None:
    resp = await node.get("/v1/ws")
    assert await _error(resp) == (400, "protocol_version")
