"""The skeleton of every misbehaving peer: a full-duplex WebSocket (and ``/v1/info``) proxy in front of an
honest node. A :class:`Peer` sees each message in each direction and passes it on, changes it or swallows
it; the defaults pass everything through. Full duplex because a node also pushes messages that answer no
request (a relayed step's receipt, an error about a relayed step).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from veriswarm.protocol import PROTOCOL_VERSION, VERSION_HEADER


class StopProxying(Exception):
    """Raised by a hook to end this connection (after doing whatever it did to the transport)."""


class Peer:
    """One connection's behaviour. Subclasses override what they change."""

    def info(self, info: dict[str, Any]) -> dict[str, Any]:
        return info

    def to_client(self, data: bytes) -> bytes | None:
        """A message from the node; None: swallowed."""
        return data

    async def to_node(self, data: bytes, down: web.WebSocketResponse, request: web.Request) -> bytes | None:
        """A message for the node; None: swallowed (the hook may answer on ``down`` itself)."""
        return data


UPSTREAM = web.AppKey("upstream", str)
PEER: web.AppKey[Callable[[], Peer]] = web.AppKey("peer")
SOCKETS = web.AppKey("sockets", set[web.WebSocketResponse])


async def _info(request: web.Request) -> web.Response:
    async with aiohttp.ClientSession() as http, http.get(request.app[UPSTREAM] + "/v1/info") as resp:
        info = await resp.json()
    return web.json_response(request.app[PEER]().info(info))


async def _ws(request: web.Request) -> web.WebSocketResponse:
    peer = request.app[PEER]()
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
                passed = peer.to_client(msg.data)
                if passed is not None:
                    await down.send_bytes(passed)
            await down.close()

        pump = asyncio.create_task(downstream())
        try:
            async for msg in down:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
                passed = await peer.to_node(msg.data, down, request)
                if passed is not None:
                    await up.send_bytes(passed)
        except StopProxying:
            pass
        finally:
            pump.cancel()
    return down


async def _close_sockets(app: web.Application) -> None:
    # Nodes keep their relay links open: close them, or the server waits out its shutdown timeout.
    for ws in list(app[SOCKETS]):
        await ws.close()


def make_proxy_app(upstream: str, peer: Callable[[], Peer]) -> web.Application:
    """A proxy for the node at ``upstream``; ``peer`` makes each connection's behaviour."""
    app = web.Application()
    app[UPSTREAM] = upstream
    app[PEER] = peer
    app[SOCKETS] = set()
    app.on_shutdown.append(_close_sockets)
    app.router.add_get("/v1/info", _info)
    app.router.add_get("/v1/ws", _ws)
    return app
