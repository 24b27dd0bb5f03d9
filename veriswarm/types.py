"""Names for the ids and units that flow through veriswarm, so signatures say what they take."""

from __future__ import annotations

from typing import NewType

#: 0x-prefixed, lower-case hex of the sha256 of a manifest's canonical JSON.
ManifestHash = NewType("ManifestHash", str)
#: Index of a shard inside a manifest (0-based, contiguous layer ranges).
ShardIndex = NewType("ShardIndex", int)
#: 0x-prefixed 32-byte hex id of an inference session, chosen by the client.
SessionId = NewType("SessionId", str)
#: EIP-55 checksummed Ethereum address of a node's receipt-signing key.
NodeAddress = NewType("NodeAddress", str)
#: 0x-prefixed hex of a sha256 digest.
Sha256Hex = NewType("Sha256Hex", str)
