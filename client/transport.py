"""A WebSocket link to one node, speaking the session protocol."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import aiohttp
from pydantic import ValidationError

from veriswarm.errors import ProtocolError, ReceiptError, RemoteError
from veriswarm.protocol import (
    PROTOCOL_VERSION,
    VERSION_HEADER,
    AnyReply,
    CloseSession,
    ErrorReply,
    ForwardRequest,
    NodeInfo,
    Opened,
    OpenSession,
    RelayResult,
    SetUpstream,
    StepRequest,
    StepResult,
    decode_reply,
    encode_envelope,
)
from veriswarm.receipts import Receipt

from .registry import PeerInfo

log = logging.getLogger("veriswarm.client")


@dataclass(frozen=True)
class ResolvedPeer:
    url: str
    shard_index: int
    address: str
    info: NodeInfo


async def fetch_info(http: aiohttp.ClientSession, url: str, timeout: float) -> NodeInfo:
    try:
        async with http.get(f"{url}/v1/info", timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                raise RemoteError(url, "info", f"GET /v1/info answered {resp.status}")
            return NodeInfo.model_validate(await resp.json())
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise RemoteError(url, "unreachable", f"{type(exc).__name__}: {exc}") from None
    except (ValidationError, ValueError) as exc:
        raise RemoteError(url, "bad_info", f"malformed /v1/info: {exc}") from None


async def resolve_peer(http: aiohttp.ClientSession, peer: PeerInfo, manifest_hash: str, timeout: float) -> ResolvedPeer:
    info = await fetch_info(http, peer.url, timeout)
    if info.manifest_hash != manifest_hash:
        raise RemoteError(peer.url, "manifest_mismatch", f"serves manifest {info.manifest_hash}, not {manifest_hash}")
    if peer.shard_index is not None and info.shard_index != peer.shard_index:
        raise RemoteError(peer.url, "wrong_shard", f"serves shard {info.shard_index}, registry says {peer.shard_index}")
    if peer.address is not None and info.address.lower() != peer.address.lower():
        raise RemoteError(peer.url, "wrong_address", f"claims key {info.address}, registry says {peer.address}")
    return ResolvedPeer(url=peer.url, shard_index=info.shard_index, address=info.address, info=info)


class NodeLink:
    """One WebSocket to one node; requests on it are strictly sequential."""

    def __init__(self, http: aiohttp.ClientSession, peer: ResolvedPeer, timeout: float) -> None:
        self.http = http
        self.peer = peer
        self.timeout = timeout
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    async def connect(self) -> None:
        url = self.peer.url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/v1/ws"
        try:
            self._ws = await self.http.ws_connect(url, headers={VERSION_HEADER: PROTOCOL_VERSION},
                                                  max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=5.0))
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise RemoteError(self.peer.url, "unreachable", f"{type(exc).__name__}: {exc}") from None

    async def send(self, message: bytes) -> None:
        if self._ws is None or self._ws.closed:
            raise RemoteError(self.peer.url, "closed", "the connection to the node is closed")
        try:
            await self._ws.send_bytes(message)
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise RemoteError(self.peer.url, "transport", f"{type(exc).__name__}: {exc}") from None

    async def receive(self, timeout: float | None = None) -> tuple[AnyReply, memoryview]:
        """The next message from the node, decoded; an ErrorReply is returned, not raised."""
        if self._ws is None or self._ws.closed:
            raise RemoteError(self.peer.url, "closed", "the connection to the node is closed")
        try:
            msg = await self._ws.receive(timeout=self.timeout if timeout is None else timeout)
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            raise RemoteError(self.peer.url, "transport", f"{type(exc).__name__}: {exc}") from None
        if msg.type != aiohttp.WSMsgType.BINARY:
            raise RemoteError(self.peer.url, "closed", f"node closed the session ({msg.type.name} {msg.data!r})")
        try:
            return decode_reply(msg.data)
        except ProtocolError as exc:
            raise RemoteError(self.peer.url, "bad_reply", str(exc)) from None

    async def _exchange(self, message: bytes) -> tuple[AnyReply, memoryview]:
        await self.send(message)
        while True:
            reply, payload = await self.receive()
            # Pushes from a relayed step that was given up on (a late result, the news of where it
            # stopped) may still be queued on this socket: they are not the answer to this request.
            if isinstance(reply, RelayResult) or (isinstance(reply, ErrorReply) and reply.code == "relay_failed"):
                log.debug("%s: dropping a stale relay message (%s)", self.peer.url, reply.type)
                continue
            if isinstance(reply, ErrorReply):
                raise RemoteError(self.peer.url, reply.code, reply.message)
            return reply, payload

    async def open(self, manifest_hash: str, shard_index: int, session_id: str, max_length: int,
                   upstream: str | None = None) -> None:
        if self._ws is None:
            await self.connect()
        reply, _ = await self._exchange(encode_envelope(OpenSession(
            manifest_hash=manifest_hash, shard_index=shard_index, session_id=session_id, max_length=max_length,
            upstream=upstream)))
        if not isinstance(reply, Opened) or reply.session_id != session_id:
            raise RemoteError(self.peer.url, "bad_reply", "expected an 'opened' reply for this session")

    async def set_upstream(self, session_id: str, upstream: str | None) -> None:
        reply, _ = await self._exchange(encode_envelope(SetUpstream(session_id=session_id, upstream=upstream)))
        if not isinstance(reply, Opened) or reply.session_id != session_id:
            raise RemoteError(self.peer.url, "bad_reply", "expected the session to be acknowledged")

    async def step(self, session_id: str, step: int, start_pos: int, nonce: str, frame: bytes) -> tuple[Receipt, bytes]:
        header = StepRequest(session_id=session_id, step=step, start_pos=start_pos, request_nonce=nonce)
        reply, payload = await self._exchange(encode_envelope(header, frame))
        if not isinstance(reply, StepResult):
            raise RemoteError(self.peer.url, "bad_reply", "expected a 'result' reply")
        try:
            receipt = Receipt.from_json(reply.receipt)
        except ReceiptError as exc:
            raise ReceiptError(f"{self.peer.url}: {exc}") from None
        return receipt, bytes(payload)

    async def forward(self, manifest_hash: str, session_id: str, nonce: str, frame: bytes) -> tuple[Receipt, bytes]:
        """Stateless forward of a whole sequence over HTTP (no session, no KV cache)."""
        header = ForwardRequest(manifest_hash=manifest_hash, shard_index=self.peer.shard_index,
                                session_id=session_id, request_nonce=nonce)
        try:
            async with self.http.post(f"{self.peer.url}/v1/forward", data=encode_envelope(header, frame),
                                      headers={VERSION_HEADER: PROTOCOL_VERSION},
                                      timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RemoteError(self.peer.url, str(resp.status), body[:300].decode(errors="replace"))
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise RemoteError(self.peer.url, "transport", f"{type(exc).__name__}: {exc}") from None
        try:
            reply, payload = decode_reply(body)
        except ProtocolError as exc:
            raise RemoteError(self.peer.url, "bad_reply", str(exc)) from None
        if not isinstance(reply, StepResult):
            raise RemoteError(self.peer.url, "bad_reply", "expected a 'result' reply")
        try:
            return Receipt.from_json(reply.receipt), bytes(payload)
        except ReceiptError as exc:
            raise ReceiptError(f"{self.peer.url}: {exc}") from None

    async def close(self, session_id: str | None = None) -> None:
        if self._ws is None or self._ws.closed:
            return
        try:
            if session_id is not None:
                await self._exchange(encode_envelope(CloseSession(session_id=session_id)))
        except RemoteError:
            pass  # closing the socket releases the session anyway
        finally:
            await self._ws.close()
