"""Inference sessions: a KV cache per session, budgets, ordering, idle expiry."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from veriswarm.errors import ErrorCode, ProtocolError
from veriswarm.split.kvcache import KVCache


@dataclass(frozen=True)
class PinnedRoute:
    """Where a session's relayed steps go from this node, as the last full RelayStep ordered it: what a
    relay tick (protocol.RelayTick) is checked against and sent on by."""

    hop: int
    hops: int
    #: the next hop's URL and node key (None: this node is the last hop)
    next_url: str | None
    next_address: str | None


@dataclass
class Session:
    session_id: str
    cache: KVCache
    context: bytes
    owner: int
    #: the node key allowed to relay steps into this session (see protocol.OpenSession.upstream)
    upstream: str | None = None
    next_step: int = 0
    #: the last step done: (request nonce, receipt, output frame), so that the same request sent again (a
    #: client falling back from a relay that broke) gets the same answer; the receipt holds the input's hash
    last: tuple[str, Any, bytes] | None = None
    last_used: float = field(default_factory=time.monotonic)
    #: set by a full relayed step; relay ticks follow it
    route: PinnedRoute | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def max_length(self) -> int:
        return self.cache.max_length


class SessionStore:
    def __init__(self, *, max_sessions: int, memory_bytes: int, idle_timeout_s: float) -> None:
        self.max_sessions = max_sessions
        self.memory_bytes = memory_bytes
        self.idle_timeout_s = idle_timeout_s
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def reserved_bytes(self) -> int:
        return sum(s.cache.reserved_bytes for s in self._sessions.values())

    @property
    def free_slots(self) -> int:
        return max(0, self.max_sessions - len(self._sessions))

    def open(self, session_id: str, cache: KVCache, context: bytes, owner: int, upstream: str | None = None) -> Session:
        if session_id in self._sessions:
            raise ProtocolError(ErrorCode.SESSION_EXISTS, f"session {session_id[:18]}… is already open")
        if len(self._sessions) >= self.max_sessions:
            raise ProtocolError(ErrorCode.CAPACITY, f"node is at its limit of {self.max_sessions} sessions")
        if self.reserved_bytes + cache.reserved_bytes > self.memory_bytes:
            raise ProtocolError(ErrorCode.CAPACITY, "node has no KV-cache memory left for a session this long")
        session = Session(session_id, cache, context, owner, upstream)
        self._sessions[session_id] = session
        return session

    def get(self, session_id: str, owner: int) -> Session:
        session = self._sessions.get(session_id)
        # A session belongs to the connection that opened it: others see it as unknown.
        if session is None or session.owner != owner:
            raise ProtocolError(ErrorCode.UNKNOWN_SESSION, f"unknown or expired session {session_id[:18]}…")
        session.last_used = time.monotonic()
        return session

    def peek(self, session_id: str) -> Session | None:
        """The session if it is open here (no ownership check, no use recorded)."""
        return self._sessions.get(session_id)

    def relayed(self, session_id: str) -> Session:
        """A session addressed by a relayed step, which may arrive on any connection (the relay's
        signed receipts, not the connection, authorise it)."""
        session = self._sessions.get(session_id)
        if session is None:
            raise ProtocolError(ErrorCode.UNKNOWN_SESSION, f"unknown or expired session {session_id[:18]}…")
        session.last_used = time.monotonic()
        return session

    def close(self, session_id: str, owner: int) -> None:
        self.get(session_id, owner)
        del self._sessions[session_id]

    def close_owned_by(self, owner: int) -> int:
        doomed = [sid for sid, s in self._sessions.items() if s.owner == owner]
        for sid in doomed:
            del self._sessions[sid]
        return len(doomed)

    def reap_idle(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        doomed = [sid for sid, s in self._sessions.items()
                  if now - s.last_used > self.idle_timeout_s and not s.lock.locked()]
        for sid in doomed:
            del self._sessions[sid]
        return len(doomed)
