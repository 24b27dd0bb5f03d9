// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {RewardsFixtures, MerkleHelper} from "./utils/Fixtures.sol";
import {Rewards} from "../src/Rewards.sol";
import {Staking} from "../src/Staking.sol";

/// @notice Reward pool funding, quorum-signed epoch settlement and Merkle claims.
contract RewardsTest is RewardsFixtures {
    event Funded(address indexed from, uint256 amount);
    event EpochSettled(uint64 indexed epoch, bytes32 root, uint256 total, uint256 signedStake);
    event Claimed(uint64 indexed epoch, address indexed account, uint256 amount);

    address internal alice = address(0xA1);
    address internal bob = address(0xB2);
    address internal carol = address(0xC3);

    function setUp() public {
        deployStaking();
        setUpVerifiers(3, 10 ether);
        deployRewards();
        vm.deal(address(this), 1_000 ether);
        rewards.fund{value: 100 ether}();
    }

    function _threeLeaves() internal view returns (bytes32[] memory leaves) {
        leaves = new bytes32[](3);
        leaves[0] = MerkleHelper.leaf(alice, 1 ether);
        leaves[1] = MerkleHelper.leaf(bob, 2 ether);
        leaves[2] = MerkleHelper.leaf(carol, 3 ether);
    }

    // ----- fund ----------------------------------------------------------------------------

    function test_fund() public {
        vm.expectEmit(true, true, true, true, address(rewards));
        emit Funded(address(this), 5 ether);
        rewards.fund{value: 5 ether}();
        vm.expectEmit(true, true, true, true, address(rewards));
        emit Funded(address(this), 1 ether);
        (bool ok,) = address(rewards).call{value: 1 ether}("");
        assertTrue(ok);
        assertEq(rewards.availablePool(), 106 ether);
        vm.expectRevert(Rewards.ZeroAmount.selector);
        rewards.fund{value: 0}();
    }

    function testFuzz_fund(address from, uint96 amount) public {
        vm.assume(amount > 0);
        vm.deal(from, amount);
        vm.prank(from);
        rewards.fund{value: amount}();
        assertEq(rewards.availablePool(), 100 ether + uint256(amount));
    }

    // ----- settle --------------------------------------------------------------------------

    function test_settle() public {
        bytes32 root = MerkleHelper.root(_threeLeaves());
        bytes[] memory sigs = allVerifierSigs(rewards.settlementDigest(1, root, 6 ether));
        vm.expectEmit(true, true, true, true, address(rewards));
        emit EpochSettled(1, root, 6 ether, 30 ether);
        rewards.settle(1, root, 6 ether, sigs);
        (bytes32 r, uint128 total, uint128 claimedSum) = rewards.epochs(1);
        assertEq(r, root);
        assertEq(uint256(total), 6 ether);
        assertEq(uint256(claimedSum), 0);
        assertEq(rewards.reserved(), 6 ether);
        assertEq(rewards.availablePool(), 94 ether);
        assertEq(uint256(rewards.lastSettledEpoch()), 1);
    }

    function testFuzz_settle(uint64 epoch, bytes32 root, uint256 total) public {
        vm.assume(epoch > 0 && root != bytes32(0));
        total = bound(total, 0, 100 ether);
        settleEpoch(epoch, root, total);
        assertEq(rewards.reserved(), total);
        assertEq(uint256(rewards.lastSettledEpoch()), epoch);
    }

    function test_settle_reverts() public {
        bytes32 root = MerkleHelper.root(_threeLeaves());
        settleEpoch(2, root, 6 ether);

        bytes[] memory sigs = allVerifierSigs(rewards.settlementDigest(2, root, 6 ether));
        vm.expectRevert(abi.encodeWithSelector(Rewards.EpochNotIncreasing.selector, uint64(2), uint64(2)));
        rewards.settle(2, root, 6 ether, sigs);

        sigs = allVerifierSigs(rewards.settlementDigest(3, bytes32(0), 6 ether));
        vm.expectRevert(Rewards.EmptyRoot.selector);
        rewards.settle(3, bytes32(0), 6 ether, sigs);

        sigs = allVerifierSigs(rewards.settlementDigest(3, root, 95 ether));
        vm.expectRevert(abi.encodeWithSelector(Rewards.InsufficientPool.selector, 95 ether, 94 ether));
        rewards.settle(3, root, 95 ether, sigs);

        uint256[] memory one = new uint256[](1);
        one[0] = verifierKeys[0];
        sigs = quorumSigs(one, rewards.settlementDigest(3, root, 1 ether));
        vm.expectRevert(abi.encodeWithSelector(Staking.QuorumNotReached.selector, 10 ether, 30 ether));
        rewards.settle(3, root, 1 ether, sigs);

        // a signature for other parameters does not carry over
        sigs = allVerifierSigs(rewards.settlementDigest(3, root, 1 ether));
        vm.expectRevert();
        rewards.settle(3, root, 2 ether, sigs);
    }

    function testFuzz_settle_revertsWhenPoolShort(uint256 total) public {
        total = bound(total, 100 ether + 1, type(uint128).max);
        bytes[] memory sigs = allVerifierSigs(rewards.settlementDigest(1, bytes32(uint256(1)), total));
        vm.expectRevert(abi.encodeWithSelector(Rewards.InsufficientPool.selector, total, 100 ether));
        rewards.settle(1, bytes32(uint256(1)), total, sigs);
    }

    // ----- claim ---------------------------------------------------------------------------

    function test_claim() public {
        bytes32[] memory leaves = _threeLeaves();
        settleEpoch(1, MerkleHelper.root(leaves), 6 ether);
        bytes32[] memory proof = MerkleHelper.proof(leaves, 1);
        vm.expectEmit(true, true, true, true, address(rewards));
        emit Claimed(1, bob, 2 ether);
        vm.prank(bob);
        rewards.claim(1, 2 ether, proof);
        assertEq(bob.balance, 2 ether);
        assertTrue(rewards.claimed(1, bob));
        assertEq(rewards.reserved(), 4 ether);
        assertEq(address(rewards).balance, 98 ether);
    }

    function test_claim_revertsTwice() public {
        bytes32[] memory leaves = _threeLeaves();
        settleEpoch(1, MerkleHelper.root(leaves), 6 ether);
        bytes32[] memory proof = MerkleHelper.proof(leaves, 2);
        vm.startPrank(carol);
        rewards.claim(1, 3 ether, proof);
        vm.expectRevert(abi.encodeWithSelector(Rewards.AlreadyClaimed.selector, uint64(1), carol));
        rewards.claim(1, 3 ether, proof);
        vm.stopPrank();
        assertEq(carol.balance, 3 ether);
    }

    function testFuzz_claim_revertsTwice(uint8 count, uint256 pick, uint64 epoch) public {
        count = uint8(bound(count, 1, 20));
        vm.assume(epoch > 0);
        (bytes32[] memory leaves, address[] memory accounts, uint256[] memory amounts, uint256 total) =
            _randomAllocations(count, pick);
        settleEpoch(epoch, MerkleHelper.root(leaves), total);
        uint256 i = pick % count;
        bytes32[] memory proof = MerkleHelper.proof(leaves, i);
        vm.prank(accounts[i]);
        rewards.claim(epoch, amounts[i], proof);
        vm.prank(accounts[i]);
        vm.expectRevert(abi.encodeWithSelector(Rewards.AlreadyClaimed.selector, epoch, accounts[i]));
        rewards.claim(epoch, amounts[i], proof);
    }

    function testFuzz_claim_allAccounts(uint8 count, uint256 seed) public {
        count = uint8(bound(count, 1, 24));
        (bytes32[] memory leaves, address[] memory accounts, uint256[] memory amounts, uint256 total) =
            _randomAllocations(count, seed);
        settleEpoch(1, MerkleHelper.root(leaves), total);
        for (uint256 i; i < count; ++i) {
            bytes32[] memory proof = MerkleHelper.proof(leaves, i);
            vm.prank(accounts[i]);
            rewards.claim(1, amounts[i], proof);
            assertEq(accounts[i].balance, amounts[i]);
        }
        assertEq(rewards.reserved(), 0);
        (,, uint128 claimedSum) = rewards.epochs(1);
        assertEq(uint256(claimedSum), total);
        assertEq(address(rewards).balance, 100 ether - total);
    }

    function test_claim_revertsBadProofOrEpoch() public {
        bytes32[] memory leaves = _threeLeaves();
        bytes32[] memory proof = MerkleHelper.proof(leaves, 0);
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(Rewards.EpochNotSettled.selector, uint64(1)));
        rewards.claim(1, 1 ether, proof);

        settleEpoch(1, MerkleHelper.root(leaves), 6 ether);
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(Rewards.InvalidProof.selector, uint64(1), alice, 2 ether));
        rewards.claim(1, 2 ether, proof);
        // bob cannot use alice's leaf
        vm.prank(bob);
        vm.expectRevert(abi.encodeWithSelector(Rewards.InvalidProof.selector, uint64(1), bob, 1 ether));
        rewards.claim(1, 1 ether, proof);
    }

    function testFuzz_claim_revertsWrongAmount(uint256 amount) public {
        vm.assume(amount != 1 ether && amount != 0);
        bytes32[] memory leaves = _threeLeaves();
        settleEpoch(1, MerkleHelper.root(leaves), 6 ether);
        bytes32[] memory proof = MerkleHelper.proof(leaves, 0);
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(Rewards.InvalidProof.selector, uint64(1), alice, amount));
        rewards.claim(1, amount, proof);
    }

    function test_claim_capsAtEpochTotal() public {
        // the quorum signs a total lower than the tree's sum: claims stop at the total
        bytes32[] memory leaves = _threeLeaves();
        settleEpoch(1, MerkleHelper.root(leaves), 4 ether);
        vm.prank(carol);
        rewards.claim(1, 3 ether, MerkleHelper.proof(leaves, 2));
        bytes32[] memory proof = MerkleHelper.proof(leaves, 1);
        vm.prank(bob);
        vm.expectRevert(abi.encodeWithSelector(Rewards.ExceedsEpochTotal.selector, uint64(1), 5 ether, 4 ether));
        rewards.claim(1, 2 ether, proof);
    }

    function test_leafHash_matchesHelper() public view {
        assertEq(rewards.leafHash(alice, 1 ether), MerkleHelper.leaf(alice, 1 ether));
    }

    function _randomAllocations(uint256 count, uint256 seed)
        internal
        pure
        returns (bytes32[] memory leaves, address[] memory accounts, uint256[] memory amounts, uint256 total)
    {
        leaves = new bytes32[](count);
        accounts = new address[](count);
        amounts = new uint256[](count);
        for (uint256 i; i < count; ++i) {
            accounts[i] = address(uint160(uint256(keccak256(abi.encode(seed, i, "acct")))));
            amounts[i] = 1 + uint256(keccak256(abi.encode(seed, i))) % 4 ether;
            total += amounts[i];
            leaves[i] = MerkleHelper.leaf(accounts[i], amounts[i]);
        }
    }
}
