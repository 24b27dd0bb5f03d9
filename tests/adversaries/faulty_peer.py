"""A faulty peer: a proxy in front of an honest node that fails in the ways issue 6 lists.

Modes:
- ``garbage``: answers every step (and pushes every relayed receipt) as random bytes.
- ``stall``: takes step and relay messages and never answers or passes them on.
- ``close_midframe``: on a step or relay message, writes half a WebSocket frame and drops the connection.
- ``lie_load``: advertises thousands of free session slots but refuses every session as at capacity.
- ``slow``: honest, but holds every step and relay message SLOW_S before passing it on.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from aiohttp import web

from veriswarm.errors import ErrorCode, ProtocolError
from veriswarm.protocol import (
    AnyReply,
    AnyRequest,
    decode_reply,
    decode_request,
    encode_envelope,
    error_reply,
    is_relay_tick,
)

from .proxy import Peer, StopProxying, make_proxy_app

SLOW_S = 0.06


def _kind(data: bytes, decode: Callable[[bytes], tuple[AnyRequest | AnyReply, Any]]) -> str:
    if is_relay_tick(data):
        return "relay"  # a relayed step on a pinned route: the same thing as a full one, for a faulty peer
    try:
        return str(decode(data)[0].type)
    except ProtocolError:
        return "?"


class FaultyPeer(Peer):
    def __init__(self, mode: str) -> None:
        self.mode = mode

    def info(self, info: dict[str, Any]) -> dict[str, Any]:
        if self.mode == "lie_load":
            info["max_sessions"] = info["free_sessions"] = 10_000
        return info

    def to_client(self, data: bytes) -> bytes | None:
        if self.mode == "garbage" and _kind(data, decode_reply) in ("result", "relayed"):
            return os.urandom(len(data))
        return data

    async def to_node(self, data: bytes, down: web.WebSocketResponse, request: web.Request) -> bytes | None:
        kind = _kind(data, decode_request)
        if kind in ("step", "relay") and self.mode == "stall":
            return None  # swallowed: no answer, nothing passed on
        if kind in ("step", "relay") and self.mode == "close_midframe" and request.transport is not None:
            # A binary frame header announcing 4096 bytes, then 7 of them, then the connection drops.
            request.transport.write(b"\x82\x7e\x10\x00partial")
            request.transport.abort()
            raise StopProxying
        if kind in ("step", "relay") and self.mode == "slow":
            await asyncio.sleep(SLOW_S)
        if kind == "open" and self.mode == "lie_load":
            err = ProtocolError(ErrorCode.CAPACITY, "node is at its limit of 32 sessions")
            await down.send_bytes(encode_envelope(error_reply(err)))
            return None
        return data


def make_faulty_app(upstream: str, mode: str) -> web.Application:
    return make_proxy_app(upstream, lambda: FaultyPeer(mode))
