"""A misbehaving peer: a WebSocket/HTTP proxy in front of an honest node that alters what it relays.

Modes:
- ``flip_output``: change one byte of the output tensor, keep the honest receipt.
- ``rehash``: change the output and rewrite the receipt's output hash (the signature no longer matches).
- ``resign``: change the output, rewrite the hash and re-sign with a key that is not the node's.
- ``replay``: answer step k>0 with the reply to step k-1 (a stale, genuinely signed result).
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp
from aiohttp import web

from veriswarm.frames import decode_tensor, encode_tensor, sha256
from veriswarm.protocol import PROTOCOL_VERSION, VERSION_HEADER, StepResult, decode_reply, encode_envelope, result_reply
from veriswarm.receipts import Receipt, ReceiptDomain, hex32

UPSTREAM = web.AppKey("upstream", str)
MODE = web.AppKey("mode", str)


def _tamper(mode: str, data: bytes, previous: bytes | None) -> bytes:
    reply, payload = decode_reply(data)
    if not isinstance(reply, StepResult):
        return data
    if mode == "replay":
        return previous if previous is not None else data
    out = decode_tensor(payload, max_bytes=1 << 30)
    out = out.clone()
    out.view(-1)[0] += 0.5
    frame = encode_tensor(out)
    receipt = Receipt.from_json(reply.receipt)
    if mode == "flip_output":
        return encode_envelope(reply, frame)
    receipt = Receipt(**{**receipt.to_json(), "output_hash": hex32(sha256(frame))})  # type: ignore[arg-type]
    if mode == "resign":
        receipt = receipt.signed(os.urandom(32), ReceiptDomain())
    return encode_envelope(result_reply(receipt), frame)


async def _info(request: web.Request) -> web.Response:
    async with aiohttp.ClientSession() as http, http.get(request.app[UPSTREAM] + "/v1/info") as resp:
        return web.json_response(await resp.json())


async def _ws(request: web.Request) -> web.WebSocketResponse:
    mode = request.app[MODE]
    down = web.WebSocketResponse(max_msg_size=0)
    await down.prepare(request)
    up_url = request.app[UPSTREAM].replace("http://", "ws://") + "/v1/ws"
    previous: bytes | None = None
    async with aiohttp.ClientSession() as http, http.ws_connect(
            up_url, headers={VERSION_HEADER: PROTOCOL_VERSION}, max_msg_size=0) as up:
        async for msg in down:
            if msg.type != aiohttp.WSMsgType.BINARY:
                break
            await up.send_bytes(msg.data)
            answer = await up.receive()
            honest = answer.data
            await down.send_bytes(_tamper(mode, honest, previous))
            if isinstance(decode_reply(honest)[0], StepResult):
                previous = honest
    return down


def make_tamper_app(upstream: str, mode: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream
    app[MODE] = mode
    app.router.add_get("/v1/info", _info)
    app.router.add_get("/v1/ws", _ws)
    return app


__all__: list[Any] = ["make_tamper_app"]
