"""Server-to-server relay: a node hands its output straight to the next node of the chain.

The client orders a whole step at once (:class:`~veriswarm.protocol.RelayStep`); each node computes
its hop, sends the output on, and only then signs its receipt and pushes it (with its output frame)
to the client over the client's own connection: the token waits on forwards and sends only, while
signing and the client's checks overlap the next node's forward. A relay link proves the sending
node's key once, when it opens (hello, challenge, signed proof); the next node takes relayed steps for
a session only over a link proven to be the upstream the client named. Any failure is pushed to the
client as an error for the session, and the client falls back to asking each node itself (steps are
idempotent, so nothing is lost).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiohttp

from veriswarm.errors import ErrorCode, ProtocolError
from veriswarm.protocol import (
    PROTOCOL_VERSION,
    VERSION_HEADER,
    ErrorReply,
    LinkAccepted,
    LinkChallenge,
    LinkHello,
    LinkProof,
    decode_reply,
    encode_envelope,
    link_digest,
)
from veriswarm.receipts import address_of, sign_digest

#: called with (session id, step, reason) when a next hop refuses a relayed step it cannot pin on a session,
#: or its connection drops with relayed steps sent on it
OnRefused = Callable[[str, int | None, str], Awaitable[None]]

log = logging.getLogger("veriswarm.node.relay")


class RelayLinks:
    """One outgoing WebSocket per next-hop URL, reused across sessions and steps."""

    def __init__(self, *, private_key: bytes, timeout_s: float, max_msg_bytes: int,
                 on_refused: OnRefused | None = None) -> None:
        self.private_key = private_key
        self.address = address_of(private_key)
        self.timeout_s = timeout_s
        self.on_refused = on_refused
        self.max_msg_bytes = max_msg_bytes
        self._http: aiohttp.ClientSession | None = None
        self._links: dict[str, aiohttp.ClientWebSocketResponse] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: per next-hop URL, the last step relayed for each session: who to warn if that connection drops
        #: (no acknowledgement comes back on a relay link, so "sent on it" is all a node can know)
        self._sent: dict[str, dict[str, int]] = {}

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s))

    async def send(self, url: str, message: bytes, *, session_id: str, step: int, address: str) -> None:
        """Send one relay message to the node at ``url`` (whose key is ``address``); ProtocolError(RELAY_FAILED)
        if it can't be."""
        ws = await self._link(url, address)
        sent = self._sent.setdefault(url, {})
        sent.pop(session_id, None)
        sent[session_id] = step
        while len(sent) > 1024:  # bounded: the oldest sessions are the least likely still in flight
            sent.pop(next(iter(sent)))
        try:
            await ws.send_bytes(message)
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            await self._drop(url)
            raise ProtocolError(ErrorCode.RELAY_FAILED, f"could not relay to {url}: {type(exc).__name__}: {exc}") from None

    async def _link(self, url: str, address: str) -> aiohttp.ClientWebSocketResponse:
        ws = self._links.get(url)
        if ws is not None and not ws.closed:
            return ws
        async with self._locks.setdefault(url, asyncio.Lock()):
            ws = self._links.get(url)
            if ws is not None and not ws.closed:
                return ws
            if self._http is None:
                raise ProtocolError(ErrorCode.RELAY_FAILED, "this node is shutting down")
            ws_url = url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/v1/ws"
            try:
                ws = await self._http.ws_connect(ws_url, headers={VERSION_HEADER: PROTOCOL_VERSION},
                                                 max_msg_size=self.max_msg_bytes, heartbeat=30.0,
                                                 timeout=aiohttp.ClientWSTimeout(ws_close=2.0))
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
                raise ProtocolError(ErrorCode.RELAY_FAILED,
                                    f"could not reach the next hop {url}: {type(exc).__name__}: {exc}") from None
            try:
                await self._authenticate(ws, url, address)
            except BaseException:
                await ws.close()
                raise
            self._links[url] = ws
            # Someone must read the socket, or the peer's heartbeat pings go unanswered and errors it
            # sends back (about a relayed message it could not even attribute to a session) are lost.
            self._readers[url] = asyncio.create_task(self._drain(url, ws))
            return ws

    async def _authenticate(self, ws: aiohttp.ClientWebSocketResponse, url: str, address: str) -> None:
        """Prove this node's key to the next hop, once per link: it signs the next hop's fresh challenge."""
        def refused(why: str) -> ProtocolError:
            return ProtocolError(ErrorCode.RELAY_FAILED, f"relay link to {url} not authenticated: {why}")

        async def exchange(message: bytes) -> object:
            await ws.send_bytes(message)
            msg = await ws.receive(timeout=self.timeout_s)
            if msg.type != aiohttp.WSMsgType.BINARY:
                raise refused(f"the next hop closed the link ({msg.type.name})")
            reply, _ = decode_reply(msg.data)
            if isinstance(reply, ErrorReply):
                raise refused(reply.message)
            return reply

        try:
            challenge = await exchange(encode_envelope(LinkHello()))
            if not isinstance(challenge, LinkChallenge):
                raise refused("expected a challenge")
            if challenge.address.lower() != address.lower():
                raise refused(f"it answers with key {challenge.address}, the client ordered {address}")
            proof = LinkProof(address=self.address,
                              signature=sign_digest(self.private_key, link_digest(challenge.address, challenge.nonce)))
            if not isinstance(await exchange(encode_envelope(proof)), LinkAccepted):
                raise refused("expected the link to be accepted")
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            raise refused(f"{type(exc).__name__}: {exc}") from None

    async def _drain(self, url: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                continue
            try:
                reply, _ = decode_reply(msg.data)
            except ProtocolError:
                log.warning("next hop %s sent something unreadable", url)
                continue
            # The next hop answers a relayed step only when it has no session to blame it on (e.g. it
            # restarted): tell our client at once rather than let it wait for its timeout.
            if isinstance(reply, ErrorReply) and reply.session_id and self.on_refused is not None:
                await self.on_refused(reply.session_id, reply.step,
                                      f"next hop {url} refused the relayed step: {reply.message}")
        # The connection is gone (the next node died, or dropped it mid-frame): the steps relayed on it may
        # never arrive. Warn their clients now; a client that already has its result ignores a stale warning.
        if self._links.get(url) is ws:
            self._links.pop(url, None)
            self._readers.pop(url, None)
        sent = self._sent.pop(url, {})
        if self.on_refused is not None:
            for session_id, step in sent.items():
                await self.on_refused(session_id, step, f"the connection to the next hop {url} closed")

    async def _drop(self, url: str) -> None:
        ws = self._links.pop(url, None)
        if ws is not None:
            await ws.close()
        reader = self._readers.pop(url, None)
        if reader is not None:
            reader.cancel()

    async def close(self) -> None:
        for url in list(self._links):
            await self._drop(url)
        if self._http is not None:
            await self._http.close()
            self._http = None
