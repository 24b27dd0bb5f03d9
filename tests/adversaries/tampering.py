"""A misbehaving peer: a WebSocket/HTTP proxy in front of an honest node that alters what it relays
(its answers to the client, and the receipts it pushes to the client during a server-to-server relay).

Modes:
- ``flip_output``: change one byte of the output tensor, keep the honest receipt.
- ``rehash``: change the output and rewrite the receipt's output hash (the signature no longer matches).
- ``resign``: change the output, rewrite the hash and re-sign with a key that is not the node's.
- ``replay``: answer step k>0 with the reply to step k-1 (a stale, genuinely signed result).
- ``drop_receipt``: withhold the receipts of relayed steps (the node still computes and relays on).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
from aiohttp import web

from veriswarm.frames import decode_tensor, encode_tensor, sha256
from veriswarm.protocol import (
    PROTOCOL_VERSION,
    VERSION_HEADER,
    RelayResult,
    StepResult,
    decode_reply,
    encode_envelope,
    result_reply,
)
from veriswarm.receipts import Receipt, ReceiptDomain, hex32

UPSTREAM = web.AppKey("upstream", str)
MODE = web.AppKey("mode", str)
SOCKETS = web.AppKey("sockets", set[web.WebSocketResponse])


def _tamper(mode: str, data: bytes, previous: bytes | None) -> bytes | None:
    """What the proxy passes on instead of ``data`` (None: nothing)."""
    reply, payload = decode_reply(data)
    if not isinstance(reply, StepResult | RelayResult):
        return data
    if mode == "replay":
        return previous if previous is not None else data
    if mode == "drop_receipt":
        return None if isinstance(reply, RelayResult) else data
    out = decode_tensor(payload, max_bytes=1 << 30).clone()
    out.view(-1)[0] += 0.5
    frame = encode_tensor(out)
    receipt = Receipt.from_json(reply.receipt)
    if mode != "flip_output":
        receipt = Receipt(**{**receipt.to_json(), "output_hash": hex32(sha256(frame))})  # type: ignore[arg-type]
        if mode == "resign":
            receipt = receipt.signed(os.urandom(32), ReceiptDomain())
    if isinstance(reply, RelayResult):
        return encode_envelope(RelayResult(session_id=reply.session_id, hop=reply.hop, receipt=receipt.to_json()), frame)
    return encode_envelope(result_reply(receipt), frame)


async def _info(request: web.Request) -> web.Response:
    async with aiohttp.ClientSession() as http, http.get(request.app[UPSTREAM] + "/v1/info") as resp:
        return web.json_response(await resp.json())


async def _ws(request: web.Request) -> web.WebSocketResponse:
    """Full duplex: the node may push messages (a relayed step's result) that answer no request."""
    mode = request.app[MODE]
    down = web.WebSocketResponse(max_msg_size=0)
    await down.prepare(request)
    request.app[SOCKETS].add(down)
    up_url = request.app[UPSTREAM].replace("http://", "ws://") + "/v1/ws"
    async with aiohttp.ClientSession() as http, http.ws_connect(
            up_url, headers={VERSION_HEADER: PROTOCOL_VERSION}, max_msg_size=0) as up:

        async def downstream() -> None:
            previous: dict[str, bytes] = {}
            async for msg in up:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
                honest = msg.data
                kind = decode_reply(honest)[0].type
                altered = _tamper(mode, honest, previous.get(kind))
                if altered is not None:
                    await down.send_bytes(altered)
                if kind in ("result", "relayed"):
                    previous[kind] = honest
            await down.close()

        pump = asyncio.create_task(downstream())
        try:
            async for msg in down:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
                await up.send_bytes(msg.data)
        finally:
            pump.cancel()
    return down


async def _close_sockets(app: web.Application) -> None:
    # Nodes keep their relay links open: close them, or the server waits out its shutdown timeout.
    for ws in list(app[SOCKETS]):
        await ws.close()


def make_tamper_app(upstream: str, mode: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream
    app[MODE] = mode
    app[SOCKETS] = set()
    app.on_shutdown.append(_close_sockets)
    app.router.add_get("/v1/info", _info)
    app.router.add_get("/v1/ws", _ws)
    return app


__all__: list[Any] = ["make_tamper_app"]
