// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {RewardsFixtures, MerkleHelper} from "./utils/Fixtures.sol";
import {Staking} from "../src/Staking.sol";
import {Rewards} from "../src/Rewards.sol";

/// @dev Re-enters `target` with `reentryData` from its receive hook and records what happened.
/// The re-entry is a low-level call so a blocked re-entry does not revert the outer transfer:
/// the test then checks that the re-entry failed and that value left exactly once.
contract Attacker {
    address public target;
    bytes public reentryData;
    uint256 public receivedCount;
    bool public reentrySucceeded;
    bytes public reentryRevertData;

    function arm(address target_, bytes calldata reentryData_) external {
        target = target_;
        reentryData = reentryData_;
    }

    function exec(address to, uint256 value, bytes calldata data) external returns (bytes memory) {
        (bool ok, bytes memory ret) = to.call{value: value}(data);
        if (!ok) {
            assembly {
                revert(add(ret, 32), mload(ret))
            }
        }
        return ret;
    }

    receive() external payable {
        ++receivedCount;
        if (target != address(0) && receivedCount == 1) {
            (bool ok, bytes memory ret) = target.call(reentryData);
            reentrySucceeded = ok;
            reentryRevertData = ret;
        }
    }
}

contract ReentrancyTest is RewardsFixtures {
    Attacker internal attacker;
    bytes internal constant GUARD_ERROR = abi.encodeWithSignature("ReentrancyGuardReentrantCall()");

    function setUp() public {
        deployStaking();
        setUpVerifiers(3, 10 ether);
        deployRewards();
        attacker = new Attacker();
        vm.deal(address(attacker), 100 ether);
    }

    function _registerAttackerAsNode(uint256 stake) internal {
        attacker.exec(
            address(staking), stake, abi.encodeCall(Staking.register, ("http://attacker", uint32(0), MANIFEST))
        );
    }

    function test_reenterWithdraw() public {
        _registerAttackerAsNode(5 ether);
        registerNode(0xB0B, 5 ether, 0); // an honest node whose stake must stay put
        attacker.exec(address(staking), 0, abi.encodeCall(Staking.requestUnbond, ()));
        vm.warp(block.timestamp + UNBONDING_DELAY);
        attacker.arm(address(staking), abi.encodeCall(Staking.withdraw, ()));

        uint256 before = address(attacker).balance;
        attacker.exec(address(staking), 0, abi.encodeCall(Staking.withdraw, ()));

        assertEq(attacker.receivedCount(), 1);
        assertFalse(attacker.reentrySucceeded(), "re-entry into withdraw succeeded");
        assertEq(attacker.reentryRevertData(), GUARD_ERROR, "re-entry not stopped by the guard");
        assertEq(address(attacker).balance, before + 5 ether);
        assertEq(address(staking).balance, 30 ether + 5 ether); // verifiers + honest node
    }

    function test_reenterWithdraw_crossFunctionIntoWithdrawOwed() public {
        _registerAttackerAsNode(5 ether);
        attacker.exec(address(staking), 0, abi.encodeCall(Staking.requestUnbond, ()));
        vm.warp(block.timestamp + UNBONDING_DELAY);
        attacker.arm(address(staking), abi.encodeCall(Staking.withdrawOwed, ()));
        attacker.exec(address(staking), 0, abi.encodeCall(Staking.withdraw, ()));
        assertFalse(attacker.reentrySucceeded());
        assertEq(attacker.reentryRevertData(), GUARD_ERROR);
    }

    function test_reenterWithdrawOwed() public {
        // attacker reports an equivocation and earns bond + reward credits
        registerNode(0xB0B, 4 ether, 0);
        uint256 id = equivocate(0xB0B, keccak256("ctx"), address(attacker));
        vm.warp(block.timestamp + VETO_WINDOW);
        staking.finalizeSlash(id);
        uint256 credit = staking.owed(address(attacker));
        assertEq(credit, BOND + 0.2 ether);

        attacker.arm(address(staking), abi.encodeCall(Staking.withdrawOwed, ()));
        uint256 before = address(attacker).balance;
        attacker.exec(address(staking), 0, abi.encodeCall(Staking.withdrawOwed, ()));

        assertEq(attacker.receivedCount(), 1);
        assertFalse(attacker.reentrySucceeded(), "re-entry into withdrawOwed succeeded");
        assertEq(address(attacker).balance, before + credit);
        assertEq(staking.owed(address(attacker)), 0);
    }

    function test_reenterClaim() public {
        vm.deal(address(this), 10 ether);
        rewards.fund{value: 10 ether}();
        bytes32[] memory leaves = new bytes32[](2);
        leaves[0] = MerkleHelper.leaf(address(attacker), 1 ether);
        leaves[1] = MerkleHelper.leaf(address(0xB0B), 2 ether);
        settleEpoch(1, MerkleHelper.root(leaves), 3 ether);
        bytes32[] memory proof = MerkleHelper.proof(leaves, 0);
        bytes memory claimCall = abi.encodeCall(Rewards.claim, (uint64(1), 1 ether, proof));
        attacker.arm(address(rewards), claimCall);

        uint256 before = address(attacker).balance;
        attacker.exec(address(rewards), 0, claimCall);

        assertEq(attacker.receivedCount(), 1);
        assertFalse(attacker.reentrySucceeded(), "re-entry into claim succeeded");
        assertEq(attacker.reentryRevertData(), GUARD_ERROR);
        assertEq(address(attacker).balance, before + 1 ether);
        assertEq(address(rewards).balance, 9 ether);
        assertEq(rewards.reserved(), 2 ether);
        // and a later plain second claim is refused by the claimed flag
        vm.expectRevert(abi.encodeWithSelector(Rewards.AlreadyClaimed.selector, uint64(1), address(attacker)));
        attacker.exec(address(rewards), 0, claimCall);
    }

    function testFuzz_reenterClaim(uint96 amount) public {
        amount = uint96(bound(amount, 1, 50 ether));
        vm.deal(address(this), 50 ether);
        rewards.fund{value: 50 ether}();
        bytes32[] memory leaves = new bytes32[](1);
        leaves[0] = MerkleHelper.leaf(address(attacker), amount);
        settleEpoch(1, leaves[0], amount);
        bytes memory claimCall = abi.encodeCall(Rewards.claim, (uint64(1), uint256(amount), new bytes32[](0)));
        attacker.arm(address(rewards), claimCall);
        uint256 before = address(attacker).balance;
        attacker.exec(address(rewards), 0, claimCall);
        assertFalse(attacker.reentrySucceeded());
        assertEq(address(attacker).balance, before + amount);
        assertEq(address(rewards).balance, 50 ether - uint256(amount));
    }

    function testFuzz_reenterWithdraw(uint96 stake) public {
        stake = uint96(bound(stake, MIN_STAKE, 100 ether));
        _registerAttackerAsNode(stake);
        attacker.exec(address(staking), 0, abi.encodeCall(Staking.requestUnbond, ()));
        vm.warp(block.timestamp + UNBONDING_DELAY);
        attacker.arm(address(staking), abi.encodeCall(Staking.withdraw, ()));
        uint256 before = address(attacker).balance;
        attacker.exec(address(staking), 0, abi.encodeCall(Staking.withdraw, ()));
        assertFalse(attacker.reentrySucceeded());
        assertEq(address(attacker).balance, before + stake);
        assertEq(address(staking).balance, 30 ether);
    }
}
