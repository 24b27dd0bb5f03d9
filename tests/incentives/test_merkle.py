from hypothesis import given, settings
from hypothesis import strategies as st

from veriswarm.incentives.merkle import MerkleTree, leaf_hash


@settings(max_examples=50)
@given(st.dictionaries(st.integers(1, 2**160 - 1).map(lambda i: f"0x{i:040x}"), st.integers(1, 2**200), min_size=1,
                       max_size=40))
def test_every_allocation_proves_and_nothing_else_does(allocs: dict[str, int]) -> None:
    tree = MerkleTree(allocs)
    for account, amount in allocs.items():
        proof = tree.proof(account)
        assert MerkleTree.verify(tree.root, account, amount, proof)
        assert not MerkleTree.verify(tree.root, account, amount + 1, proof)


def test_leaf_matches_openzeppelin_standard_tree_encoding() -> None:
    # keccak256(bytes.concat(keccak256(abi.encode(address, uint256)))) for (0x…01, 1), computed independently
    from eth_utils import keccak

    encoded = bytes(12) + bytes.fromhex("00" * 19 + "01") + (1).to_bytes(32, "big")
    assert leaf_hash("0x" + "00" * 19 + "01", 1) == keccak(keccak(encoded))
