"""Who may make this node prove or trace: verifiers it knows, in signed, fresh, unreplayed requests.

A proof costs seconds of CPU and a node that misses a dispute deadline counts as failing, so an open
``/v1/prove`` would let anyone keep a node busy until a real verifier's challenge times out. With
``zk_verifiers`` set, or with a deployment (then the verifiers active in its ``Staking`` contract), a
dispute request must carry ``X-Veriswarm-Verifier-Signature``: a timestamp and a signature over (endpoint,
timestamp, sha256 of the body) by one of them, at most ``window_s`` old, and never seen before. With
neither the endpoints stay open (development), and the node says so when it starts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from veriswarm.errors import ErrorCode, ProtocolError
from veriswarm.zkwire import caller_of

#: (address) -> is it an active verifier? (blocking: a chain read, run in a thread)
ActiveVerifier = Callable[[str], bool]


class ZkCallers:
    """``verifiers``: addresses answered; ``on_chain``: also answer whoever the chain says is an active
    verifier (a node with a deployment). Neither: open."""

    def __init__(self, verifiers: set[str], *, on_chain: ActiveVerifier | None = None, window_s: float = 120.0,
                 chain_ttl_s: float = 60.0) -> None:
        self.verifiers = {v.lower() for v in verifiers}
        self.on_chain = on_chain
        self.window_s = window_s
        self.chain_ttl_s = chain_ttl_s
        self._seen: dict[str, float] = {}  # signature -> when it may be forgotten (its timestamp is stale by then)
        self._chain: dict[str, tuple[bool, float]] = {}  # address -> (active, read at)

    @property
    def open(self) -> bool:
        return not self.verifiers and self.on_chain is None

    def check(self, header: str | None, path: str, body: bytes, now: float | None = None) -> str | None:
        """Signature, freshness and replay: the signer's address (None when open); FORBIDDEN otherwise.
        Whether the signer may ask is :meth:`authorize`'s question."""
        if self.open:
            return None
        now = time.time() if now is None else now
        address, stamp_ms, signature = caller_of(header, path, body)
        if abs(now - stamp_ms / 1000) > self.window_s:
            raise ProtocolError(ErrorCode.FORBIDDEN, f"request timestamp is more than {self.window_s:.0f}s off")
        self._seen = {s: t for s, t in self._seen.items() if t > now}
        if signature in self._seen:
            raise ProtocolError(ErrorCode.FORBIDDEN, "this signed request was already used")
        self._seen[signature] = now + 2 * self.window_s
        return address

    async def authorize(self, header: str | None, path: str, body: bytes) -> str | None:
        address = self.check(header, path, body)
        if address is None or address.lower() in self.verifiers:
            return address
        if self.on_chain is not None and await self._active_on_chain(address):
            return address
        raise ProtocolError(ErrorCode.FORBIDDEN, f"{address} is not a verifier this node answers")

    async def _active_on_chain(self, address: str) -> bool:
        key, now = address.lower(), time.monotonic()
        cached = self._chain.get(key)
        if cached is not None and now - cached[1] < self.chain_ttl_s:
            return cached[0]
        assert self.on_chain is not None
        try:
            active = await asyncio.to_thread(self.on_chain, address)
        except Exception as exc:  # the chain is down: refuse, and say why (the verifier can retry)
            raise ProtocolError(ErrorCode.FORBIDDEN, f"cannot check {address} on chain: {type(exc).__name__}") from None
        self._chain[key] = (active, now)
        return active


def staking_verifiers(deployment: str) -> ActiveVerifier:
    """An :data:`ActiveVerifier` reading ``Staking.verifiers(address).status`` of this deployment."""
    from veriswarm.incentives.chain import Deployment

    staking = Deployment.load(deployment).staking_contract()

    def active(address: str) -> bool:
        return int(staking.call("verifiers", address)["status"]) == 2  # VerifierStatus.Active

    return active
