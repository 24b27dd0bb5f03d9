"""A misbehaving peer: a WebSocket/HTTP proxy in front of an honest node that alters what it relays
(its answers to the client, and the receipts it pushes to the client during a server-to-server relay).

Modes:
- ``flip_output``: change one byte of the output tensor, keep the honest receipt.
- ``rehash``: change the output and rewrite the receipt's output hash (the signature no longer matches).
- ``resign``: change the output, rewrite the hash and re-sign with a key that is not the node's.
- ``replay``: answer step k>0 with the reply to step k-1 (a stale, genuinely signed result).
- ``drop_receipt``: withhold the receipts of relayed steps (the node still computes and relays on).
"""

from __future__ import annotations

import os
from typing import Any

from aiohttp import web

from veriswarm.frames import decode_tensor, encode_tensor, sha256
from veriswarm.protocol import (
    RelayResult,
    StepResult,
    decode_reply,
    encode_envelope,
    result_reply,
)
from veriswarm.receipts import Receipt, ReceiptDomain, hex32

from .proxy import Peer, make_proxy_app


def _tamper(mode: str, data: bytes, previous: bytes | None) -> bytes | None:
    """What the proxy passes on instead of ``data`` (None: nothing)."""
    reply, payload = decode_reply(data)
    if not isinstance(reply, StepResult | RelayResult):
        return data
    if mode == "replay":
        return previous if previous is not None else data
    if mode == "drop_receipt":
        return None if isinstance(reply, RelayResult) else data
    out = decode_tensor(payload, max_bytes=1 << 30).clone()
    out.view(-1)[0] += 0.5
    frame = encode_tensor(out)
    receipt = Receipt.from_json(reply.receipt)
    if mode != "flip_output":
        receipt = Receipt(**{**receipt.to_json(), "output_hash": hex32(sha256(frame))})  # type: ignore[arg-type]
        if mode == "resign":
            receipt = receipt.signed(os.urandom(32), ReceiptDomain())
    if isinstance(reply, RelayResult):
        return encode_envelope(RelayResult(session_id=reply.session_id, hop=reply.hop, receipt=receipt.to_json()), frame)
    return encode_envelope(result_reply(receipt), frame)


class TamperingPeer(Peer):
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.previous: dict[str, bytes] = {}  # the last honest message of each kind, for ``replay``

    def to_client(self, data: bytes) -> bytes | None:
        kind = decode_reply(data)[0].type
        altered = _tamper(self.mode, data, self.previous.get(kind))
        if kind in ("result", "relayed"):
            self.previous[kind] = data
        return altered


def make_tamper_app(upstream: str, mode: str) -> web.Application:
    return make_proxy_app(upstream, lambda: TamperingPeer(mode))


__all__: list[Any] = ["make_tamper_app"]
