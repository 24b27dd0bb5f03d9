"""Who may make this node prove or trace: verifiers it knows, in signed, fresh, unreplayed requests.

A proof costs seconds of CPU and a node that misses a dispute deadline counts as failing, so an open
``/v1/prove`` would let anyone keep a node busy until a real verifier's challenge times out. With
``zk_verifiers`` set (the verifier addresses; on a chain, those staked in ``Staking``), a dispute request
must carry ``X-Veriswarm-Verifier-Signature``: a timestamp and a signature over (endpoint, timestamp,
sha256 of the body) by one of them, at most ``window_s`` old, and never seen before. Without
``zk_verifiers`` the endpoints stay open (development), and the node says so when it starts.
"""

from __future__ import annotations

import time

from veriswarm.errors import ErrorCode, ProtocolError
from veriswarm.zkwire import caller_of


class ZkCallers:
    def __init__(self, verifiers: set[str], *, window_s: float = 120.0) -> None:
        self.verifiers = {v.lower() for v in verifiers}
        self.window_s = window_s
        self._seen: dict[str, float] = {}  # signature -> when it may be forgotten (its timestamp is stale by then)

    @property
    def open(self) -> bool:
        return not self.verifiers

    def check(self, header: str | None, path: str, body: bytes, now: float | None = None) -> str | None:
        """The calling verifier's address (None when open); ProtocolError(FORBIDDEN) otherwise."""
        if self.open:
            return None
        now = time.time() if now is None else now
        address, stamp_ms, signature = caller_of(header, path, body)
        if address.lower() not in self.verifiers:
            raise ProtocolError(ErrorCode.FORBIDDEN, f"{address} is not a verifier this node answers")
        if abs(now - stamp_ms / 1000) > self.window_s:
            raise ProtocolError(ErrorCode.FORBIDDEN, f"request timestamp is more than {self.window_s:.0f}s off")
        self._seen = {s: t for s, t in self._seen.items() if t > now}
        if signature in self._seen:
            raise ProtocolError(ErrorCode.FORBIDDEN, "this signed request was already used")
        self._seen[signature] = now + 2 * self.window_s
        return address
