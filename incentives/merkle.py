"""Merkle trees of (account, amount) allocations, as the Rewards contract checks them.

Same construction as OpenZeppelin's StandardMerkleTree: leaf = keccak256(keccak256(abi.encode(address,
uint256))), internal node = keccak256 of the two children sorted, so proofs need no left/right flags.
"""

from __future__ import annotations

from collections.abc import Mapping

from eth_abi import encode
from eth_utils import keccak, to_checksum_address


def leaf_hash(account: str, amount: int) -> bytes:
    return keccak(keccak(encode(["address", "uint256"], [to_checksum_address(account), amount])))


def _pair(a: bytes, b: bytes) -> bytes:
    return keccak(a + b) if a < b else keccak(b + a)


class MerkleTree:
    def __init__(self, allocations: Mapping[str, int]) -> None:
        if not allocations:
            raise ValueError("a Merkle tree needs at least one allocation")
        self.allocations = {to_checksum_address(a): int(v) for a, v in allocations.items()}
        self._leaves = sorted(leaf_hash(a, v) for a, v in self.allocations.items())
        self._levels = [self._leaves]
        while len(self._levels[-1]) > 1:
            level = self._levels[-1]
            nxt = [_pair(level[i], level[i + 1]) if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
            self._levels.append(nxt)

    @property
    def root(self) -> bytes:
        return self._levels[-1][0]

    def proof(self, account: str) -> list[bytes]:
        account = to_checksum_address(account)
        idx = self._leaves.index(leaf_hash(account, self.allocations[account]))
        out = []
        for level in self._levels[:-1]:
            sibling = idx ^ 1
            if sibling < len(level):
                out.append(level[sibling])
            idx //= 2
        return out

    @staticmethod
    def verify(root: bytes, account: str, amount: int, proof: list[bytes]) -> bool:
        node = leaf_hash(account, amount)
        for sibling in proof:
            node = _pair(node, sibling)
        return node == root
