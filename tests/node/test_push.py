"""Pushes to a client that stops reading never stall the node (a relayed decode step is handled in the
read loop of the link it came over: a push that waited on one client would hold up every session
relayed over that link). A real socket and a misbehaving client: a raw WebSocket that stops reading."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from pathlib import Path

from aiohttp.test_utils import TestServer

from veriswarm.manifest import ModelDir
from veriswarm.node.app import MAX_UNREAD_PUSH_BYTES, STATE, _push, make_app
from veriswarm.node.config import NodeConfig
from veriswarm.protocol import PROTOCOL_VERSION, VERSION_HEADER
from veriswarm.split.artifacts import load_shard

KEY = bytes.fromhex("11" * 32)


class RawClient:
    """A WebSocket client on a bare socket with a small receive buffer, that reads only when told to."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(sock, (f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                                       f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                                       f"Sec-WebSocket-Version: 13\r\n{VERSION_HEADER}: {PROTOCOL_VERSION}\r\n\r\n").encode())
        client = cls(sock)
        head = await client._until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return client

    async def _more(self) -> bool:
        try:
            data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, 1 << 16), timeout=10)
        except ConnectionResetError:  # the node dropped the connection
            return False
        self.buf += data
        return bool(data)

    async def _until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            if not await self._more():
                raise ConnectionError("closed")
        head, self.buf = self.buf.split(marker, 1)
        return head

    async def _take(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if not await self._more():
                return None
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    async def frame(self) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next frame from the server (unmasked), or None at end of stream."""
        head = await self._take(2)
        if head is None:
            return None
        n = head[1] & 0x7F
        if n == 126:
            n = struct.unpack(">H", await self._take(2) or b"\0\0")[0]
        elif n == 127:
            n = struct.unpack(">Q", await self._take(8) or b"\0" * 8)[0]
        payload = await self._take(n)
        return None if payload is None else (head[0] & 0x0F, payload)


async def _stalled_client(tiny_dir: Path, count: int) -> tuple[list[int], int, bool]:
    """Push ``count`` 8 KiB messages to a client that reads none of them, then let it read; return the
    order they arrived in, how many were queued at the peak, and whether the node dropped the connection."""
    md = ModelDir.open(tiny_dir)
    app = make_app(config=NodeConfig(model_dir=tiny_dir, shard=1), manifest=md.manifest,
                   shard=load_shard(md, 1), private_key=KEY)
    async with TestServer(app) as server:
        assert server.port is not None
        client = await RawClient.connect(server.port)
        st = app[STATE]
        for _ in range(100):
            if st.connections:
                break
            await asyncio.sleep(0.01)
        (conn,) = st.connections.values()
        # A small kernel send buffer too, so that a few pushes fill it (Linux grows it otherwise).
        assert conn.transport is not None
        conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        peak = 0
        for i in range(count):
            # The guard only turns a hang into a failure: _push must return at once, reader or not.
            await asyncio.wait_for(_push(st, conn, i.to_bytes(2, "little") * 4096), timeout=10)
            peak = max(peak, conn.queued_pushes)
        closed = conn.transport.is_closing()
        got: list[int] = []
        while len(got) < count and (frame := await client.frame()) is not None and frame[0] == 0x2:
            got.append(int.from_bytes(frame[1][:2], "little"))
        client.sock.close()
        # Whatever became of that client, the node serves the next one.
        again = await RawClient.connect(server.port)
        again.sock.close()
        return got, peak, closed


async def test_pushes_to_a_client_that_stops_reading_queue_in_order_and_never_wait(tiny_dir: Path) -> None:
    count = 128  # 1 MiB: far more than the kernel's small buffers take, far less than the cap
    got, peak, closed = await _stalled_client(tiny_dir, count)
    assert peak > 0, "the kernel's buffers took every push: the test did not reach the queued path"
    assert got == list(range(count)) and not closed


async def test_a_client_that_never_reads_is_dropped_instead_of_buffered_without_end(tiny_dir: Path) -> None:
    count = 2 * MAX_UNREAD_PUSH_BYTES // 8192
    got, _, closed = await _stalled_client(tiny_dir, count)
    assert closed
    # What it was sent before it was cut off arrives in order, and the node stopped buffering near the cap.
    assert got == list(range(len(got))) and len(got) < count * 3 // 4
