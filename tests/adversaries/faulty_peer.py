"""A faulty peer: a proxy in front of an honest node that fails in the ways issue 6 lists.

Modes:
- ``garbage``: answers every step (and hands back every relayed chain) as random bytes.
- ``stall``: takes step and relay messages and never answers or passes them on.
- ``close_midframe``: on a step or relay message, writes half a WebSocket frame and drops the connection.
- ``lie_load``: advertises thousands of free session slots but refuses every session as at capacity.
"""

from __future__ import annotations

import asyncio
import os

import aiohttp
from aiohttp import web

from veriswarm.errors import ErrorCode, ProtocolError
from veriswarm.protocol import PROTOCOL_VERSION, VERSION_HEADER, decode_reply, decode_request, encode_envelope, error_reply

UPSTREAM = web.AppKey("upstream", str)
MODE = web.AppKey("mode", str)
SOCKETS = web.AppKey("sockets", set[web.WebSocketResponse])


def _kind(data: bytes, decode: object) -> str:
    try:
        return str(decode(data)[0].type)  # type: ignore[operator]
    except ProtocolError:
        return "?"


async def _info(request: web.Request) -> web.Response:
    async with aiohttp.ClientSession() as http, http.get(request.app[UPSTREAM] + "/v1/info") as resp:
        info = await resp.json()
    if request.app[MODE] == "lie_load":
        info["max_sessions"] = info["free_sessions"] = 10_000
    return web.json_response(info)


async def _ws(request: web.Request) -> web.WebSocketResponse:
    mode = request.app[MODE]
    down = web.WebSocketResponse(max_msg_size=0)
    await down.prepare(request)
    request.app[SOCKETS].add(down)
    up_url = request.app[UPSTREAM].replace("http://", "ws://") + "/v1/ws"
    async with aiohttp.ClientSession() as http, http.ws_connect(
            up_url, headers={VERSION_HEADER: PROTOCOL_VERSION}, max_msg_size=0) as up:

        async def downstream() -> None:
            async for msg in up:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
                if mode == "garbage" and _kind(msg.data, decode_reply) in ("result", "relayed"):
                    await down.send_bytes(os.urandom(len(msg.data)))
                else:
                    await down.send_bytes(msg.data)
            await down.close()

        pump = asyncio.create_task(downstream())
        try:
            async for msg in down:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
                kind = _kind(msg.data, decode_request)
                if kind in ("step", "relay") and mode == "stall":
                    continue  # swallowed: no answer, nothing passed on
                if kind in ("step", "relay") and mode == "close_midframe" and request.transport is not None:
                    # A binary frame header announcing 4096 bytes, then 7 of them, then the connection drops.
                    request.transport.write(b"\x82\x7e\x10\x00partial")
                    request.transport.abort()
                    break
                if kind == "open" and mode == "lie_load":
                    err = ProtocolError(ErrorCode.CAPACITY, "node is at its limit of 32 sessions")
                    await down.send_bytes(encode_envelope(error_reply(err)))
                    continue
                await up.send_bytes(msg.data)
        finally:
            pump.cancel()
    return down


async def _close_sockets(app: web.Application) -> None:
    for ws in list(app[SOCKETS]):
        await ws.close()


def make_faulty_app(upstream: str, mode: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream
    app[MODE] = mode
    app[SOCKETS] = set()
    app.on_shutdown.append(_close_sockets)
    app.router.add_get("/v1/info", _info)
    app.router.add_get("/v1/ws", _ws)
    return app
