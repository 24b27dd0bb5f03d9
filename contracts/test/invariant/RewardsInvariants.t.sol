// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Vm} from "../utils/Vm.sol";
import {RewardsFixtures, MerkleHelper} from "../utils/Fixtures.sol";
import {Rewards} from "../../src/Rewards.sol";

/// @notice Drives {Rewards}: funding, settlements with random allocations, claims and re-claims.
contract RewardsHandler {
    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));
    uint256 internal constant ACCOUNTS = 4;

    Rewards public immutable rewards;
    uint256[] internal _verifierKeys;

    uint64[] public settledEpochs;
    mapping(uint64 => uint256[]) internal _amounts; // per epoch, per account index
    mapping(uint64 => mapping(uint256 => bool)) public ghostClaimed;

    uint256 public ghostFunded;
    uint256 public ghostPaid;
    bool public ghostDoubleClaim;
    bool public ghostFirstClaimFailed;

    constructor(Rewards rewards_, uint256[] memory verifierKeys_) {
        rewards = rewards_;
        _verifierKeys = verifierKeys_;
    }

    function account(uint256 i) public pure returns (address) {
        return address(uint160(0xACC000 + i));
    }

    function accountCount() external pure returns (uint256) {
        return ACCOUNTS;
    }

    function settledCount() external view returns (uint256) {
        return settledEpochs.length;
    }

    function fund(uint96 amount) external {
        amount = uint96(1 + amount % 20 ether);
        vm.deal(address(this), amount);
        rewards.fund{value: amount}();
        ghostFunded += amount;
    }

    function settle(uint256 seed, uint8 gap) external {
        uint64 epoch = rewards.lastSettledEpoch() + 1 + (gap % 3);
        uint256[] memory amounts = new uint256[](ACCOUNTS);
        bytes32[] memory leaves = new bytes32[](ACCOUNTS);
        uint256 total;
        for (uint256 i; i < ACCOUNTS; ++i) {
            amounts[i] = uint256(keccak256(abi.encode(seed, i))) % 2 ether; // zero allowed (unclaimable)
            total += amounts[i];
            leaves[i] = MerkleHelper.leaf(account(i), amounts[i]);
        }
        bytes32 root = MerkleHelper.root(leaves);
        bytes[] memory sigs = _quorumSigs(rewards.settlementDigest(epoch, root, total));
        rewards.settle(epoch, root, total, sigs);
        settledEpochs.push(epoch);
        _amounts[epoch] = amounts;
    }

    function claim(uint256 epochSeed, uint256 accountSeed) external {
        if (settledEpochs.length == 0) return;
        uint64 epoch = settledEpochs[epochSeed % settledEpochs.length];
        uint256 i = accountSeed % ACCOUNTS;
        uint256 amount = _amounts[epoch][i];
        bytes32[] memory leaves = new bytes32[](ACCOUNTS);
        for (uint256 k; k < ACCOUNTS; ++k) {
            leaves[k] = MerkleHelper.leaf(account(k), _amounts[epoch][k]);
        }
        bytes32[] memory proof = MerkleHelper.proof(leaves, i);
        bool already = ghostClaimed[epoch][i];
        vm.prank(account(i));
        try rewards.claim(epoch, amount, proof) {
            if (already) ghostDoubleClaim = true;
            ghostClaimed[epoch][i] = true;
            ghostPaid += amount;
        } catch (bytes memory err) {
            // a first claim of a non-zero allocation must succeed; a second one must fail with AlreadyClaimed
            if (already) {
                if (
                    keccak256(err)
                        != keccak256(abi.encodeWithSelector(Rewards.AlreadyClaimed.selector, epoch, account(i)))
                ) {
                    ghostDoubleClaim = true;
                }
            } else if (amount != 0) {
                ghostFirstClaimFailed = true;
            }
        }
    }

    function _quorumSigs(bytes32 digest) internal view returns (bytes[] memory sigs) {
        uint256 n = _verifierKeys.length;
        uint256[] memory keys = new uint256[](n);
        for (uint256 i; i < n; ++i) {
            keys[i] = _verifierKeys[i];
        }
        for (uint256 i = 1; i < n; ++i) {
            uint256 k = keys[i];
            uint256 j = i;
            while (j > 0 && vm.addr(keys[j - 1]) > vm.addr(k)) {
                keys[j] = keys[j - 1];
                --j;
            }
            keys[j] = k;
        }
        sigs = new bytes[](n);
        for (uint256 i; i < n; ++i) {
            (uint8 v, bytes32 r, bytes32 s) = vm.sign(keys[i], digest);
            sigs[i] = abi.encodePacked(r, s, v);
        }
    }
}

/// @notice Invariants of {Rewards}.
contract RewardsInvariantTest is RewardsFixtures {
    RewardsHandler internal handler;

    function setUp() public {
        deployStaking();
        setUpVerifiers(3, 10 ether);
        deployRewards();
        handler = new RewardsHandler(rewards, verifierKeys);
        targetContract(address(handler));
    }

    /// @dev Pool accounting: balance == funded − paid, and reserved == Σ (total − claimed).
    function invariant_poolAccounting() public view {
        assertEq(address(rewards).balance, handler.ghostFunded() - handler.ghostPaid(), "balance");
        uint256 outstanding;
        for (uint256 i; i < handler.settledCount(); ++i) {
            (, uint128 total, uint128 claimedSum) = rewards.epochs(handler.settledEpochs(i));
            assertLe(claimedSum, total, "claimed > total");
            outstanding += uint256(total) - claimedSum;
        }
        assertEq(rewards.reserved(), outstanding, "reserved");
        assertGe(address(rewards).balance, rewards.reserved(), "under-reserved");
    }

    /// @dev No allocation is ever paid twice, and the claimed flags match the ghost.
    function invariant_noDoubleClaim() public view {
        assertFalse(handler.ghostDoubleClaim(), "double claim");
        assertFalse(handler.ghostFirstClaimFailed(), "valid first claim failed");
        for (uint256 e; e < handler.settledCount(); ++e) {
            uint64 epoch = handler.settledEpochs(e);
            for (uint256 i; i < handler.accountCount(); ++i) {
                assertEq(rewards.claimed(epoch, handler.account(i)), handler.ghostClaimed(epoch, i), "claimed flag");
            }
        }
    }
}
