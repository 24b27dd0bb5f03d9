// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Fixtures} from "./utils/Fixtures.sol";
import {Staking} from "../src/Staking.sol";

/// @notice Node registry, stake, unbonding and withdrawal.
contract StakingNodeTest is Fixtures {
    uint256 internal constant NODE_KEY = 0xB0B;
    address internal node;

    event NodeRegistered(
        address indexed node, bytes32 indexed manifestHash, uint32 indexed shardIndex, string endpoint, uint256 stake
    );
    event EndpointUpdated(address indexed node, string endpoint);
    event ShardUpdated(address indexed node, bytes32 indexed manifestHash, uint32 indexed shardIndex);
    event StakeAdded(address indexed node, uint256 amount, uint256 newStake);
    event UnbondRequested(address indexed node, uint64 unlockAt);
    event Withdrawn(address indexed node, uint256 amount);

    function setUp() public {
        deployStaking();
        node = vm.addr(NODE_KEY);
        vm.deal(node, 1_000 ether);
    }

    // ----- constructor ---------------------------------------------------------------------

    function test_constructor_setsParams() public view {
        assertEq(staking.minStake(), MIN_STAKE);
        assertEq(staking.minVerifierStake(), MIN_VERIFIER_STAKE);
        assertEq(staking.challengeBond(), BOND);
        assertEq(uint256(staking.challengeWindow()), CHALLENGE_WINDOW);
        assertEq(uint256(staking.unbondingDelay()), UNBONDING_DELAY);
        assertEq(uint256(staking.vetoWindow()), VETO_WINDOW);
        assertEq(uint256(staking.jailDuration()), JAIL_DURATION);
        assertEq(uint256(staking.reporterShareBps()), REPORTER_BPS);
        assertEq(uint256(staking.equivocationSlashBps()), EQUIVOCATION_BPS);
        assertEq(staking.treasury(), TREASURY);
    }

    function test_constructor_rejectsBadParams() public {
        Staking.Params memory p = defaultParams();
        p.unbondingDelay = p.challengeWindow - 1;
        vm.expectRevert(abi.encodeWithSelector(Staking.InvalidParameter.selector, "unbondingDelay"));
        new Staking(p);

        p = defaultParams();
        p.reporterShareBps = 1_001;
        vm.expectRevert(abi.encodeWithSelector(Staking.InvalidParameter.selector, "reporterShareBps"));
        new Staking(p);

        p = defaultParams();
        p.minStake = 0;
        vm.expectRevert(abi.encodeWithSelector(Staking.InvalidParameter.selector, "minStake"));
        new Staking(p);

        p = defaultParams();
        p.treasury = address(0);
        vm.expectRevert(abi.encodeWithSelector(Staking.InvalidParameter.selector, "treasury"));
        new Staking(p);

        p = defaultParams();
        p.equivocationSlashBps = 10_001;
        vm.expectRevert(abi.encodeWithSelector(Staking.InvalidParameter.selector, "equivocationSlashBps"));
        new Staking(p);
    }

    function testFuzz_constructor_reporterShareCapped(uint16 bps) public {
        Staking.Params memory p = defaultParams();
        p.reporterShareBps = bps;
        if (bps > 1_000) {
            vm.expectRevert(abi.encodeWithSelector(Staking.InvalidParameter.selector, "reporterShareBps"));
            new Staking(p);
        } else {
            assertEq(uint256(new Staking(p).reporterShareBps()), bps);
        }
    }

    // ----- register ------------------------------------------------------------------------

    function test_register() public {
        vm.expectEmit(true, true, true, true, address(staking));
        emit NodeRegistered(node, MANIFEST, 2, ENDPOINT, 2 ether);
        vm.prank(node);
        staking.register{value: 2 ether}(ENDPOINT, 2, MANIFEST);

        Staking.Node memory n = staking.getNode(node);
        assertEq(uint256(n.stake), 2 ether);
        assertEq(uint256(uint8(n.status)), uint256(uint8(Staking.NodeStatus.Active)));
        assertEq(uint256(n.shardIndex), 2);
        assertEq(n.manifestHash, MANIFEST);
        assertEq(n.endpoint, ENDPOINT);
        assertTrue(staking.isActive(node));
        (address[] memory nodes, string[] memory endpoints) = staking.activeNodes(MANIFEST, 2);
        assertEq(nodes.length, 1);
        assertEq(nodes[0], node);
        assertEq(endpoints[0], ENDPOINT);
        (nodes,) = staking.activeNodes(MANIFEST, 3);
        assertEq(nodes.length, 0);
        assertEq(address(staking).balance, 2 ether);
    }

    function testFuzz_register(uint96 stake, uint32 shard, bytes32 manifest, uint8 endpointLen) public {
        stake = uint96(bound(stake, MIN_STAKE, 500 ether));
        uint256 len = bound(endpointLen, 1, 256);
        string memory endpoint = string(new bytes(len));
        vm.prank(node);
        staking.register{value: stake}(endpoint, shard, manifest);
        Staking.Node memory n = staking.getNode(node);
        assertEq(uint256(n.stake), stake);
        assertEq(uint256(n.shardIndex), shard);
        assertEq(n.manifestHash, manifest);
        (address[] memory nodes,) = staking.activeNodes(manifest, shard);
        assertEq(nodes.length, 1);
        assertEq(address(staking).balance, stake);
    }

    function test_register_revertsBelowMinimum() public {
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(Staking.InsufficientStake.selector, 0.5 ether, MIN_STAKE));
        staking.register{value: 0.5 ether}(ENDPOINT, 0, MANIFEST);
    }

    function testFuzz_register_revertsBelowMinimum(uint256 stake) public {
        stake = bound(stake, 0, MIN_STAKE - 1);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(Staking.InsufficientStake.selector, stake, MIN_STAKE));
        staking.register{value: stake}(ENDPOINT, 0, MANIFEST);
    }

    function test_register_revertsTwice() public {
        registerNode(NODE_KEY, MIN_STAKE, 0);
        vm.deal(node, MIN_STAKE);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(Staking.AlreadyRegistered.selector, node));
        staking.register{value: MIN_STAKE}(ENDPOINT, 1, MANIFEST);
    }

    function test_register_revertsBadEndpoint() public {
        vm.startPrank(node);
        vm.expectRevert(abi.encodeWithSelector(Staking.InvalidEndpointLength.selector, 0, 256));
        staking.register{value: MIN_STAKE}("", 0, MANIFEST);
        vm.expectRevert(abi.encodeWithSelector(Staking.InvalidEndpointLength.selector, 257, 256));
        staking.register{value: MIN_STAKE}(string(new bytes(257)), 0, MANIFEST);
        vm.stopPrank();
    }

    function testFuzz_register_endpointLength(uint16 len) public {
        len = uint16(bound(len, 0, 600));
        vm.prank(node);
        if (len == 0 || len > 256) {
            vm.expectRevert(abi.encodeWithSelector(Staking.InvalidEndpointLength.selector, len, 256));
        }
        staking.register{value: MIN_STAKE}(string(new bytes(len)), 0, MANIFEST);
    }

    // ----- updates -------------------------------------------------------------------------

    function test_updateEndpoint() public {
        registerNode(NODE_KEY, MIN_STAKE, 0);
        vm.expectEmit(true, true, true, true, address(staking));
        emit EndpointUpdated(node, "http://new:1");
        vm.prank(node);
        staking.updateEndpoint("http://new:1");
        assertEq(staking.getNode(node).endpoint, "http://new:1");
    }

    function testFuzz_updateEndpoint(string calldata endpoint) public {
        vm.assume(bytes(endpoint).length > 0 && bytes(endpoint).length <= 256);
        registerNode(NODE_KEY, MIN_STAKE, 0);
        vm.prank(node);
        staking.updateEndpoint(endpoint);
        assertEq(staking.getNode(node).endpoint, endpoint);
    }

    function test_updateEndpoint_revertsUnregistered() public {
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(Staking.NotRegistered.selector, node));
        staking.updateEndpoint("x");
    }

    function test_updateShard_movesListing() public {
        address a = registerNode(1, MIN_STAKE, 0);
        address b = registerNode(2, MIN_STAKE, 0);
        address c = registerNode(3, MIN_STAKE, 0);
        bytes32 other = keccak256("other-manifest");
        vm.expectEmit(true, true, true, true, address(staking));
        emit ShardUpdated(a, other, 5);
        vm.prank(a);
        staking.updateShard(other, 5);

        address[] memory shard0 = staking.registeredNodes(MANIFEST, 0);
        assertEq(shard0.length, 2);
        // swap-and-pop: c moved into a's slot
        assertEq(shard0[0], c);
        assertEq(shard0[1], b);
        (address[] memory moved,) = staking.activeNodes(other, 5);
        assertEq(moved.length, 1);
        assertEq(moved[0], a);
        assertEq(uint256(staking.getNode(c).listPosition), 1);
    }

    function testFuzz_updateShard(uint32 shard, bytes32 manifest) public {
        registerNode(NODE_KEY, MIN_STAKE, 0);
        vm.prank(node);
        staking.updateShard(manifest, shard);
        Staking.Node memory n = staking.getNode(node);
        assertEq(uint256(n.shardIndex), shard);
        assertEq(n.manifestHash, manifest);
        (address[] memory nodes,) = staking.activeNodes(manifest, shard);
        assertEq(nodes.length, 1);
        if (manifest != MANIFEST || shard != 0) {
            assertEq(staking.registeredNodes(MANIFEST, 0).length, 0);
        }
    }

    // ----- stake ---------------------------------------------------------------------------

    function test_addStake() public {
        registerNode(NODE_KEY, MIN_STAKE, 0);
        vm.deal(node, 1 ether);
        vm.expectEmit(true, true, true, true, address(staking));
        emit StakeAdded(node, 1 ether, 2 ether);
        vm.prank(node);
        staking.addStake{value: 1 ether}();
        assertEq(uint256(staking.getNode(node).stake), 2 ether);
    }

    function testFuzz_addStake(uint96 initial, uint96 extra) public {
        initial = uint96(bound(initial, MIN_STAKE, 100 ether));
        extra = uint96(bound(extra, 1, 100 ether));
        registerNode(NODE_KEY, initial, 0);
        vm.deal(node, extra);
        vm.prank(node);
        staking.addStake{value: extra}();
        assertEq(uint256(staking.getNode(node).stake), uint256(initial) + extra);
        assertEq(address(staking).balance, uint256(initial) + extra);
    }

    function test_addStake_reverts() public {
        vm.prank(node);
        vm.expectRevert(Staking.ZeroAmount.selector);
        staking.addStake{value: 0}();
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(Staking.NotRegistered.selector, node));
        staking.addStake{value: 1}();
        registerNode(NODE_KEY, MIN_STAKE, 0);
        vm.prank(node);
        staking.requestUnbond();
        vm.deal(node, 1);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(Staking.NodeNotActive.selector, node, Staking.NodeStatus.Unbonding));
        staking.addStake{value: 1}();
    }

    // ----- unbond / withdraw -----------------------------------------------------------------

    function test_requestUnbond() public {
        registerNode(NODE_KEY, MIN_STAKE, 0);
        uint64 unlockAt = uint64(block.timestamp) + UNBONDING_DELAY;
        vm.expectEmit(true, true, true, true, address(staking));
        emit UnbondRequested(node, unlockAt);
        vm.prank(node);
        staking.requestUnbond();
        Staking.Node memory n = staking.getNode(node);
        assertEq(uint256(uint8(n.status)), uint256(uint8(Staking.NodeStatus.Unbonding)));
        assertEq(uint256(n.unlockAt), unlockAt);
        assertFalse(staking.isActive(node));
        (address[] memory nodes,) = staking.activeNodes(MANIFEST, 0);
        assertEq(nodes.length, 0);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(Staking.NodeNotActive.selector, node, Staking.NodeStatus.Unbonding));
        staking.requestUnbond();
    }

    function testFuzz_requestUnbond(uint32 at) public {
        registerNode(NODE_KEY, MIN_STAKE, 0);
        vm.warp(block.timestamp + at);
        vm.prank(node);
        staking.requestUnbond();
        assertEq(uint256(staking.getNode(node).unlockAt), block.timestamp + UNBONDING_DELAY);
    }

    function test_withdraw() public {
        registerNode(NODE_KEY, 3 ether, 0);
        vm.prank(node);
        staking.requestUnbond();
        vm.warp(block.timestamp + UNBONDING_DELAY);
        uint256 before = node.balance;
        vm.expectEmit(true, true, true, true, address(staking));
        emit Withdrawn(node, 3 ether);
        vm.prank(node);
        staking.withdraw();
        assertEq(node.balance, before + 3 ether);
        assertEq(address(staking).balance, 0);
        assertEq(uint256(uint8(staking.getNode(node).status)), 0);
        assertEq(staking.registeredNodes(MANIFEST, 0).length, 0);
        // may register again
        registerNode(NODE_KEY, MIN_STAKE, 1);
        assertTrue(staking.isActive(node));
    }

    function testFuzz_withdraw_respectsDelay(uint96 stake, uint64 wait) public {
        stake = uint96(bound(stake, MIN_STAKE, 100 ether));
        wait = uint64(bound(wait, 0, 2 * UNBONDING_DELAY));
        registerNode(NODE_KEY, stake, 0);
        vm.prank(node);
        staking.requestUnbond();
        uint64 unlockAt = uint64(block.timestamp) + UNBONDING_DELAY;
        vm.warp(block.timestamp + wait);
        vm.prank(node);
        if (wait < UNBONDING_DELAY) {
            vm.expectRevert(abi.encodeWithSelector(Staking.StillLocked.selector, unlockAt, block.timestamp));
            staking.withdraw();
        } else {
            staking.withdraw();
            assertEq(address(staking).balance, 0);
        }
    }

    function test_withdraw_revertsWhenNotUnbonding() public {
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(Staking.NodeNotUnbonding.selector, node, Staking.NodeStatus.None));
        staking.withdraw();
        registerNode(NODE_KEY, MIN_STAKE, 0);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(Staking.NodeNotUnbonding.selector, node, Staking.NodeStatus.Active));
        staking.withdraw();
    }

    function test_withdraw_revertsWhenRecipientRejects() public {
        Rejecter r = new Rejecter();
        vm.deal(address(r), MIN_STAKE);
        r.registerAndUnbond(staking, MIN_STAKE);
        vm.warp(block.timestamp + UNBONDING_DELAY);
        vm.expectRevert(abi.encodeWithSelector(Staking.TransferFailed.selector, address(r), MIN_STAKE));
        r.withdraw(staking);
    }

    function test_activeNodes_filters() public {
        address a = registerNode(1, MIN_STAKE, 0);
        address b = registerNode(2, MIN_STAKE, 0);
        address c = registerNode(3, MIN_STAKE, 0);
        vm.prank(b);
        staking.requestUnbond();
        (address[] memory nodes, string[] memory endpoints) = staking.activeNodes(MANIFEST, 0);
        assertEq(nodes.length, 2);
        assertEq(endpoints.length, 2);
        assertEq(nodes[0], a);
        assertEq(nodes[1], c);
    }

    function testFuzz_activeNodes_count(uint8 total, uint8 unbondMask) public {
        total = uint8(bound(total, 0, 12));
        uint256 expected;
        for (uint256 i; i < total; ++i) {
            address n = registerNode(100 + i, MIN_STAKE, 7);
            if ((uint256(unbondMask) >> (i % 8)) & 1 == 1) {
                vm.prank(n);
                staking.requestUnbond();
            } else {
                ++expected;
            }
        }
        (address[] memory nodes,) = staking.activeNodes(MANIFEST, 7);
        assertEq(nodes.length, expected);
        assertEq(staking.registeredNodes(MANIFEST, 7).length, total);
    }
}

/// @notice Verifier set and the stake-weighted quorum check.
contract StakingVerifierTest is Fixtures {
    event VerifierRegistered(address indexed verifier, uint256 stake, uint64 activatesAt);
    event VerifierActivated(address indexed verifier, uint256 stake, uint256 totalVerifierStake);

    function setUp() public {
        deployStaking();
    }

    function test_registerAndActivateVerifier() public {
        address v = vm.addr(0xA11CE);
        vm.deal(v, 10 ether);
        vm.expectEmit(true, true, true, true, address(staking));
        emit VerifierRegistered(v, 10 ether, uint64(block.timestamp) + ACTIVATION_DELAY);
        vm.prank(v);
        staking.registerVerifier{value: 10 ether}();
        assertEq(staking.totalVerifierStake(), 0);

        vm.expectRevert(
            abi.encodeWithSelector(
                Staking.ActivationNotReady.selector, uint64(block.timestamp) + ACTIVATION_DELAY, block.timestamp
            )
        );
        staking.activateVerifier(v);

        vm.warp(block.timestamp + ACTIVATION_DELAY);
        vm.expectEmit(true, true, true, true, address(staking));
        emit VerifierActivated(v, 10 ether, 10 ether);
        staking.activateVerifier(v);
        assertEq(staking.totalVerifierStake(), 10 ether);
        assertEq(staking.activeVerifierCount(), 1);
    }

    function testFuzz_registerVerifier(uint96 stake) public {
        address v = vm.addr(0xA11CE);
        vm.deal(v, stake);
        vm.prank(v);
        if (stake < MIN_VERIFIER_STAKE) {
            vm.expectRevert(abi.encodeWithSelector(Staking.InsufficientStake.selector, stake, MIN_VERIFIER_STAKE));
            staking.registerVerifier{value: stake}();
            return;
        }
        staking.registerVerifier{value: stake}();
        vm.warp(block.timestamp + ACTIVATION_DELAY);
        staking.activateVerifier(v);
        assertEq(staking.totalVerifierStake(), stake);
    }

    function test_verifierUnbondAndWithdraw() public {
        setUpVerifiers(2, 10 ether);
        address v = vm.addr(verifierKeys[0]);
        vm.prank(v);
        staking.requestVerifierUnbond();
        assertEq(staking.totalVerifierStake(), 10 ether);
        assertEq(staking.activeVerifierCount(), 1);
        vm.prank(v);
        vm.expectRevert(
            abi.encodeWithSelector(
                Staking.StillLocked.selector, uint64(block.timestamp) + UNBONDING_DELAY, block.timestamp
            )
        );
        staking.withdrawVerifier();
        vm.warp(block.timestamp + UNBONDING_DELAY);
        uint256 before = v.balance;
        vm.prank(v);
        staking.withdrawVerifier();
        assertEq(v.balance, before + 10 ether);
        (,,, Staking.VerifierStatus st) = staking.verifiers(v);
        assertEq(uint256(uint8(st)), 0);
    }

    function testFuzz_verifierUnbond_pendingOrActive(bool activate, uint32 wait) public {
        address v = vm.addr(0xA11CE);
        addVerifier(0xA11CE, 10 ether);
        if (activate) {
            vm.warp(block.timestamp + ACTIVATION_DELAY);
            staking.activateVerifier(v);
        }
        vm.prank(v);
        staking.requestVerifierUnbond();
        assertEq(staking.totalVerifierStake(), 0);
        vm.warp(block.timestamp + wait);
        vm.prank(v);
        if (wait < UNBONDING_DELAY) vm.expectRevert();
        staking.withdrawVerifier();
    }

    function test_verifier_reverts() public {
        address v = vm.addr(0xA11CE);
        vm.expectRevert(
            abi.encodeWithSelector(Staking.UnexpectedVerifierStatus.selector, v, Staking.VerifierStatus.None)
        );
        staking.activateVerifier(v);
        vm.prank(v);
        vm.expectRevert(
            abi.encodeWithSelector(Staking.UnexpectedVerifierStatus.selector, v, Staking.VerifierStatus.None)
        );
        staking.requestVerifierUnbond();
        addVerifier(0xA11CE, 10 ether);
        vm.deal(v, 10 ether);
        vm.prank(v);
        vm.expectRevert(abi.encodeWithSelector(Staking.VerifierAlreadyRegistered.selector, v));
        staking.registerVerifier{value: 10 ether}();
    }

    // ----- quorum --------------------------------------------------------------------------

    function test_checkQuorum_twoThirds() public {
        setUpVerifiers(3, 10 ether);
        bytes32 digest = keccak256("msg");
        uint256[] memory two = new uint256[](2);
        two[0] = verifierKeys[0];
        two[1] = verifierKeys[1];
        assertEq(staking.checkQuorum(digest, quorumSigs(two, digest)), 20 ether);

        uint256[] memory one = new uint256[](1);
        one[0] = verifierKeys[2];
        bytes[] memory sigs = quorumSigs(one, digest);
        vm.expectRevert(abi.encodeWithSelector(Staking.QuorumNotReached.selector, 10 ether, 30 ether));
        staking.checkQuorum(digest, sigs);
    }

    function test_checkQuorum_rejectsDuplicatesAndUnsorted() public {
        setUpVerifiers(3, 10 ether);
        bytes32 digest = keccak256("msg");
        bytes[] memory sorted = allVerifierSigs(digest);
        bytes[] memory dup = new bytes[](3);
        dup[0] = sorted[0];
        dup[1] = sorted[0];
        dup[2] = sorted[1];
        address s0 = _signer(digest, sorted[0]);
        vm.expectRevert(abi.encodeWithSelector(Staking.SignersNotSorted.selector, s0, s0));
        staking.checkQuorum(digest, dup);

        bytes[] memory rev = new bytes[](3);
        rev[0] = sorted[2];
        rev[1] = sorted[1];
        rev[2] = sorted[0];
        vm.expectRevert(
            abi.encodeWithSelector(
                Staking.SignersNotSorted.selector, _signer(digest, sorted[2]), _signer(digest, sorted[1])
            )
        );
        staking.checkQuorum(digest, rev);
    }

    function test_checkQuorum_rejectsOutsiders() public {
        setUpVerifiers(3, 10 ether);
        bytes32 digest = keccak256("msg");
        uint256[] memory keys = new uint256[](1);
        keys[0] = 0xDEAD;
        bytes[] memory sigs = quorumSigs(keys, digest);
        vm.expectRevert(abi.encodeWithSelector(Staking.NotActiveVerifier.selector, vm.addr(0xDEAD)));
        staking.checkQuorum(digest, sigs);
    }

    function test_checkQuorum_noVerifiers() public {
        bytes[] memory sigs = new bytes[](0);
        vm.expectRevert(Staking.NoVerifiers.selector);
        staking.checkQuorum(bytes32(0), sigs);
    }

    function testFuzz_checkQuorum(uint64[5] memory stakes, uint8 mask) public {
        uint256 total;
        uint256 signed;
        uint256 count;
        for (uint256 i; i < 5; ++i) {
            uint256 s = bound(stakes[i], MIN_VERIFIER_STAKE, 1_000 ether);
            verifierKeys.push(0xA11CE + i);
            addVerifier(0xA11CE + i, s);
            total += s;
            if ((mask >> i) & 1 == 1) {
                signed += s;
                ++count;
            }
        }
        vm.warp(block.timestamp + ACTIVATION_DELAY);
        for (uint256 i; i < 5; ++i) {
            staking.activateVerifier(vm.addr(verifierKeys[i]));
        }
        uint256[] memory keys = new uint256[](count);
        uint256 k;
        for (uint256 i; i < 5; ++i) {
            if ((mask >> i) & 1 == 1) keys[k++] = verifierKeys[i];
        }
        bytes32 digest = keccak256(abi.encode(stakes, mask));
        bytes[] memory sigs = quorumSigs(keys, digest);
        if (signed * 3 >= total * 2) {
            assertEq(staking.checkQuorum(digest, sigs), signed);
        } else {
            vm.expectRevert(abi.encodeWithSelector(Staking.QuorumNotReached.selector, signed, total));
            staking.checkQuorum(digest, sigs);
        }
    }

    function _signer(bytes32 digest, bytes memory sig) internal pure returns (address) {
        bytes32 r;
        bytes32 s;
        uint8 v;
        assembly {
            r := mload(add(sig, 32))
            s := mload(add(sig, 64))
            v := byte(0, mload(add(sig, 96)))
        }
        return ecrecover(digest, v, r, s);
    }
}

/// @dev A node contract whose receive() always reverts.
contract Rejecter {
    function registerAndUnbond(Staking s, uint256 stake) external {
        s.register{value: stake}("rejecter", 0, keccak256("veriswarm/test-manifest"));
        s.requestUnbond();
    }

    function withdraw(Staking s) external {
        s.withdraw();
    }

    receive() external payable {
        revert("no thanks");
    }
}
