// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {RewardsFixtures, MerkleHelper} from "./utils/Fixtures.sol";
import {Receipt, VerifierFault} from "../src/VeriswarmTypes.sol";
import {Staking} from "../src/Staking.sol";

/// @notice One representative call of each main entry point, for the README's gas table:
/// `forge test --isolate --gas-report --match-contract GasScenarioTest` (isolate = each call is
/// its own transaction, so cold/warm storage costs are realistic).
/// Setting: 4 verifiers (3 sign = 75% >= 2/3), 1024-leaf reward tree (10-hash proof),
/// endpoint "https://node.example:8443" (25 bytes).
contract GasScenarioTest is RewardsFixtures {
    uint256 internal constant LEAVES = 1024;

    function setUp() public {
        deployStaking();
        setUpVerifiers(4, 10 ether);
        deployRewards();
        vm.deal(address(this), 1_000 ether);
        rewards.fund{value: 500 ether}();
    }

    function _threeOfFour(bytes32 digest) internal view returns (bytes[] memory) {
        uint256[] memory keys = new uint256[](3);
        keys[0] = verifierKeys[0];
        keys[1] = verifierKeys[1];
        keys[2] = verifierKeys[2];
        return quorumSigs(keys, digest);
    }

    function test_gas_nodeLifecycle() public {
        address node = vm.addr(0xB0B);
        vm.deal(node, 10 ether);
        vm.prank(node);
        staking.register{value: 2 ether}(ENDPOINT, 0, MANIFEST);
        vm.prank(node);
        staking.addStake{value: 1 ether}();
        vm.prank(node);
        staking.requestUnbond();
        vm.warp(block.timestamp + UNBONDING_DELAY);
        vm.prank(node);
        staking.withdraw();
    }

    function test_gas_settleAndClaim() public {
        bytes32[] memory leaves = new bytes32[](LEAVES);
        for (uint256 i; i < LEAVES; ++i) {
            leaves[i] = MerkleHelper.leaf(address(uint160(0x1000 + i)), 0.1 ether);
        }
        bytes32 root = MerkleHelper.root(leaves);
        uint256 total = LEAVES * 0.1 ether;
        bytes[] memory sigs = _threeOfFour(rewards.settlementDigest(1, root, total));
        rewards.settle(1, root, total, sigs);
        bytes32[] memory proof = MerkleHelper.proof(leaves, 7);
        vm.prank(address(uint160(0x1000 + 7)));
        rewards.claim(1, 0.1 ether, proof);
    }

    function test_gas_slashEquivocationAndFinalize() public {
        registerNode(0xB0B, 2 ether, 0);
        Receipt memory a = sampleReceipt(keccak256("ctx"), keccak256("out-a"));
        Receipt memory b = sampleReceipt(keccak256("ctx"), keccak256("out-b"));
        bytes memory sa = signReceipt(0xB0B, a);
        bytes memory sb = signReceipt(0xB0B, b);
        uint256 id = staking.slashEquivocation{value: BOND}(a, sa, b, sb);
        vm.warp(block.timestamp + VETO_WINDOW);
        staking.finalizeSlash(id);
        staking.withdrawOwed();
    }

    function test_gas_slashVerdictAndVeto() public {
        address node = registerNode(0xB0B, 2 ether, 0);
        bytes32 evidence = keccak256("evidence");
        bytes[] memory sigs = _threeOfFour(staking.verdictDigest(verdictFor(node, evidence, 1_000)));
        uint256 id = staking.slashWithVerdict{value: BOND}(verdictFor(node, evidence, 1_000), sigs);
        (,,,,,,, bytes32 evidenceId) = staking.slashes(id);
        staking.vetoSlash(id, _threeOfFour(staking.vetoDigest(id, evidenceId)));
    }

    /// @dev The devnet case: 20% of a 10-ether verifier, which leaves it below the minimum (ejected).
    function test_gas_slashVerifier() public {
        VerifierFault memory f =
            faultFor(vm.addr(verifierKeys[3]), Staking.VerifierFaultKind.VoteAgainstOutcome, keccak256("vote"), 2_000);
        staking.slashVerifier(f, _threeOfFour(staking.verifierFaultDigest(f)));
    }

    receive() external payable {}
}
