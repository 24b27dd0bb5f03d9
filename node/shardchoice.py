"""What ``--shard`` asks for (one index, a contiguous range, or auto), and the key and port of each hosted shard.

The Staking contract keys a node by its address and gives each address exactly one (manifest, shard), so
a process hosting several shards needs one address per shard. Each hosted shard ``s`` signs with a key
derived from the node's key (``keccak256("veriswarm/shard-key/1" ‖ key ‖ s)``): nothing more to store or
back up, the same key file always gives the same per-shard addresses (so a registration, and a client's
trust-on-first-use of a URL, survive restarts), and one shard's key reveals nothing of another's.
``--shard N`` keeps signing with the node's own key, as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from eth_utils import keccak

from veriswarm.errors import ConfigError
from veriswarm.placement import Range

_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


@dataclass(frozen=True)
class ShardChoice:
    """``single``: one index (today's behaviour); ``span``: a fixed range; neither: auto."""

    single: int | None = None
    span: Range | None = None

    @property
    def auto(self) -> bool:
        return self.single is None and self.span is None

    @classmethod
    def parse(cls, value: str | None) -> ShardChoice | None:
        """None (flag not given) stays None so config file and environment still apply."""
        if value is None:
            return None
        text = value.strip().lower()
        if text == "auto":
            return cls()
        if text.isdigit():
            return cls(single=int(text))
        m = _RANGE.match(text)
        if not m:
            raise ConfigError(f"--shard {value!r}: expected an index (3), a range (2-3) or 'auto'")
        first, last = int(m.group(1)), int(m.group(2))
        if first > last:
            raise ConfigError(f"--shard {value!r}: the range's first shard is after its last")
        return cls(span=(first, last))


def shard_key(node_key: bytes, shard: int) -> bytes:
    """The signing key this node uses for ``shard`` when it hosts several (see the module docstring)."""
    counter = 0
    while True:
        tag = b"veriswarm/shard-key/1" + node_key + shard.to_bytes(4, "big") + bytes([counter] if counter else [])
        candidate = keccak(tag)
        if 0 < int.from_bytes(candidate, "big") < _SECP256K1_N:  # fails with probability ~2^-128
            return candidate
        counter += 1


def auto_port(base: int, shard: int) -> int:
    """In auto mode shard s is always served on base + s, so its URL stays the same across moves (a peers
    file can list every URL a node may use, and a client's pinned key for a URL stays right)."""
    return base + shard


def span_port(base: int, span: Range, shard: int) -> int:
    """With a fixed range a..b, shard s is served on base + (s - a)."""
    return base + shard - span[0]
