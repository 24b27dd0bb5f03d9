// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Fixtures} from "./utils/Fixtures.sol";
import {Staking} from "../src/Staking.sol";
import {VerifierFault, VeriswarmHashes} from "../src/VeriswarmTypes.sol";

/// @notice {Staking-slashVerifier}: a verifier's stake slashed by a 2/3 quorum of the *other* verifiers
/// (honeypot approval, vote against a decided outcome), with its reverts. Each path has a fuzzed twin.
contract VerifierSlashingTest is Fixtures {
    address internal reporter = address(0x5EE);
    address internal accused;

    event VerifierSlashed(
        address indexed verifier,
        Staking.VerifierFaultKind indexed kind,
        bytes32 evidenceId,
        uint256 amount,
        address reporter,
        uint256 reporterReward,
        uint256 remainingStake
    );
    event VerifierUnbondRequested(address indexed verifier, uint64 unlockAt, uint256 totalVerifierStake);

    Staking.VerifierFaultKind internal constant HONEYPOT = Staking.VerifierFaultKind.HoneypotApproval;
    Staking.VerifierFaultKind internal constant AGAINST = Staking.VerifierFaultKind.VoteAgainstOutcome;

    function setUp() public {
        deployStaking();
        setUpVerifiers(4, 20 ether); // 80 ether in the quorum
        accused = vm.addr(verifierKeys[3]);
    }

    function _evidenceId(address verifier, bytes32 evidence) internal pure returns (bytes32) {
        return keccak256(abi.encode(uint8(2), verifier, evidence));
    }

    /// @dev Replaces the verifier set with four verifiers of the given stakes (keys 0xF00D + i).
    function _customSet(uint96[4] memory stakes) internal returns (uint256 total) {
        deployStaking();
        delete verifierKeys;
        for (uint256 i; i < 4; ++i) {
            stakes[i] = uint96(bound(stakes[i], MIN_VERIFIER_STAKE, 1_000 ether));
            verifierKeys.push(0xF00D + i);
            addVerifier(0xF00D + i, stakes[i]);
            total += stakes[i];
        }
        vm.warp(block.timestamp + ACTIVATION_DELAY);
        for (uint256 i; i < 4; ++i) {
            staking.activateVerifier(vm.addr(verifierKeys[i]));
        }
    }

    // ----- vote against a decided outcome ---------------------------------------------------

    function test_slashVerifier_voteAgainstOutcome() public {
        VerifierFault memory f = faultFor(accused, AGAINST, keccak256("vote"), 2_000);
        bytes[] memory sigs = otherVerifierSigs(f);
        uint256 balance = address(staking).balance;
        vm.expectEmit(true, true, true, true, address(staking));
        emit VerifierSlashed(
            accused, AGAINST, _evidenceId(accused, keccak256("vote")), 4 ether, reporter, 0.4 ether, 16 ether
        );
        vm.prank(reporter);
        uint256 amount = staking.slashVerifier(f, sigs);

        assertEq(amount, 4 ether);
        assertEq(verifierStake(accused), 16 ether);
        assertEq(uint256(uint8(verifierStatus(accused))), uint256(uint8(Staking.VerifierStatus.Active)));
        assertEq(staking.totalVerifierStake(), 76 ether);
        assertEq(staking.activeVerifierCount(), 4);
        assertEq(staking.owed(reporter), 0.4 ether); // reporterShareBps of the amount, no bond
        assertEq(staking.owed(TREASURY), 3.6 ether);
        assertTrue(staking.evidenceUsed(_evidenceId(accused, keccak256("vote"))));
        assertEq(address(staking).balance, balance); // an internal move between buckets
    }

    function testFuzz_slashVerifier_voteAgainstOutcome(
        uint96[4] memory stakes,
        uint8 accusedIndex,
        uint8 signerMask,
        uint16 bps,
        bool honeypot
    ) public {
        uint256 total = _customSet(stakes);
        bps = uint16(bound(bps, 0, staking.MAX_VERIFIER_SLASH_BPS()));
        uint256 a = accusedIndex % 4;
        (uint256[] memory keys, uint256 signed) = _subset(stakes, a, signerMask);
        uint256 others = total - stakes[a];
        VerifierFault memory f = faultFor(vm.addr(verifierKeys[a]), honeypot ? HONEYPOT : AGAINST, keccak256("e"), bps);
        bytes[] memory sigs = quorumSigs(keys, staking.verifierFaultDigest(f));
        if (signed * 3 < others * 2) {
            vm.expectRevert(abi.encodeWithSelector(Staking.QuorumNotReached.selector, signed, others));
            staking.slashVerifier(f, sigs);
            return;
        }
        vm.prank(reporter);
        uint256 amount = staking.slashVerifier(f, sigs);
        _checkSlashed(f.verifier, stakes[a], total, amount, bps);
    }

    /// @dev Keys (and summed stake) of a random subset of the verifiers other than `a`.
    function _subset(uint96[4] memory stakes, uint256 a, uint8 mask)
        internal
        view
        returns (uint256[] memory keys, uint256 signed)
    {
        uint256 n;
        keys = new uint256[](3);
        for (uint256 i; i < 4; ++i) {
            if (i != a && mask & (1 << i) != 0) {
                keys[n++] = verifierKeys[i];
                signed += stakes[i];
            }
        }
        assembly ("memory-safe") {
            mstore(keys, n)
        }
    }

    function _checkSlashed(address who, uint256 stake, uint256 total, uint256 amount, uint16 bps) internal view {
        uint256 expected = stake * bps / 10_000;
        assertEq(amount, expected);
        assertLe(amount, stake / 2, "verifier slash above the cap");
        uint256 remaining = stake - expected;
        assertEq(verifierStake(who), remaining);
        bool ejected = remaining < MIN_VERIFIER_STAKE;
        assertEq(staking.totalVerifierStake(), ejected ? total - stake : total - expected, "totalVerifierStake");
        assertEq(staking.activeVerifierCount(), ejected ? 3 : 4);
        uint256 reward = expected * REPORTER_BPS / 10_000;
        assertEq(staking.owed(reporter), reward);
        assertEq(staking.owed(TREASURY), expected - reward);
    }

    /// @dev The accused's stake is out of the denominator: 2 of the 3 others (40 of 60) suffice, where
    /// checkQuorum over all 80 would need 53.3.
    function test_slashVerifier_quorumExcludesAccusedStake() public {
        uint256[] memory two = new uint256[](2);
        two[0] = verifierKeys[0];
        two[1] = verifierKeys[1];
        VerifierFault memory f = faultFor(accused, AGAINST, keccak256("vote"), 1_000);
        bytes32 digest = staking.verifierFaultDigest(f);
        bytes[] memory sigs = quorumSigs(two, digest);
        vm.expectRevert(abi.encodeWithSelector(Staking.QuorumNotReached.selector, 40 ether, 80 ether));
        staking.checkQuorum(digest, sigs);
        assertEq(staking.slashVerifier(f, sigs), 2 ether);
    }

    function test_slashVerifier_ejectsBelowMinimum() public {
        verifierSlash(accused, AGAINST, keccak256("e1"), 5_000, reporter); // 20 -> 10 = minimum: stays
        assertEq(uint256(uint8(verifierStatus(accused))), uint256(uint8(Staking.VerifierStatus.Active)));
        assertEq(staking.totalVerifierStake(), 70 ether);

        VerifierFault memory f = faultFor(accused, HONEYPOT, keccak256("e2"), 5_000);
        bytes[] memory sigs = otherVerifierSigs(f);
        uint64 unlockAt = uint64(block.timestamp) + UNBONDING_DELAY;
        vm.expectEmit(true, true, true, true, address(staking));
        emit VerifierUnbondRequested(accused, unlockAt, 60 ether);
        staking.slashVerifier(f, sigs); // 10 -> 5 < minimum: leaves the quorum
        assertEq(verifierStake(accused), 5 ether);
        assertEq(uint256(uint8(verifierStatus(accused))), uint256(uint8(Staking.VerifierStatus.Unbonding)));
        assertEq(staking.totalVerifierStake(), 60 ether);
        assertEq(staking.activeVerifierCount(), 3);

        vm.warp(unlockAt);
        uint256 before = accused.balance;
        vm.prank(accused);
        staking.withdrawVerifier();
        assertEq(accused.balance, before + 5 ether);
    }

    // ----- honeypot approval ----------------------------------------------------------------

    function test_slashVerifier_honeypotApproval_whileUnbonding() public {
        vm.prank(accused);
        staking.requestVerifierUnbond(); // leaving does not escape the fault
        assertEq(staking.totalVerifierStake(), 60 ether);
        vm.expectEmit(true, true, true, true, address(staking));
        emit VerifierSlashed(
            accused, HONEYPOT, _evidenceId(accused, keccak256("pot")), 2 ether, reporter, 0.2 ether, 18 ether
        );
        uint256 amount = verifierSlash(accused, HONEYPOT, keccak256("pot"), 1_000, reporter);
        assertEq(amount, 2 ether);
        assertEq(verifierStake(accused), 18 ether);
        assertEq(staking.totalVerifierStake(), 60 ether); // it was already out of the quorum
        vm.warp(block.timestamp + UNBONDING_DELAY);
        uint256 before = accused.balance;
        vm.prank(accused);
        staking.withdrawVerifier();
        assertEq(accused.balance, before + 18 ether);
    }

    function testFuzz_slashVerifier_honeypotApproval_whileUnbonding(uint16 bps, uint32 wait, bytes32 evidence) public {
        bps = uint16(bound(bps, 0, 5_000));
        vm.prank(accused);
        staking.requestVerifierUnbond();
        vm.warp(block.timestamp + bound(wait, 0, UNBONDING_DELAY));
        uint256 amount = verifierSlash(accused, HONEYPOT, evidence, bps, reporter);
        assertEq(amount, 20 ether * uint256(bps) / 10_000);
        assertEq(verifierStake(accused), 20 ether - amount);
        assertEq(staking.totalVerifierStake(), 60 ether);
        assertEq(staking.owed(reporter) + staking.owed(TREASURY), amount);
    }

    // ----- reverts ----------------------------------------------------------------------------

    function test_slashVerifier_revertsNoQuorum() public {
        uint256[] memory one = new uint256[](1);
        one[0] = verifierKeys[0];
        VerifierFault memory f = faultFor(accused, AGAINST, keccak256("vote"), 1_000);
        bytes[] memory sigs = quorumSigs(one, staking.verifierFaultDigest(f));
        vm.expectRevert(abi.encodeWithSelector(Staking.QuorumNotReached.selector, 20 ether, 60 ether));
        staking.slashVerifier(f, sigs);
        vm.expectRevert(abi.encodeWithSelector(Staking.QuorumNotReached.selector, 0, 60 ether));
        staking.slashVerifier(f, new bytes[](0));
    }

    function testFuzz_slashVerifier_revertsNoQuorum(uint96[4] memory stakes, uint8 accusedIndex, uint8 signerIndex)
        public
    {
        uint256 total = _customSet(stakes);
        uint256 a = accusedIndex % 4;
        uint256 s = (a + 1 + signerIndex % 3) % 4; // one of the others
        uint256 others = total - stakes[a];
        vm.assume(uint256(stakes[s]) * 3 < others * 2);
        uint256[] memory one = new uint256[](1);
        one[0] = verifierKeys[s];
        VerifierFault memory f = faultFor(vm.addr(verifierKeys[a]), AGAINST, keccak256("e"), 1_000);
        bytes[] memory sigs = quorumSigs(one, staking.verifierFaultDigest(f));
        vm.expectRevert(abi.encodeWithSelector(Staking.QuorumNotReached.selector, stakes[s], others));
        staking.slashVerifier(f, sigs);
    }

    function test_slashVerifier_revertsAccusedSigned() public {
        VerifierFault memory f = faultFor(accused, AGAINST, keccak256("vote"), 1_000);
        bytes[] memory sigs = allVerifierSigs(staking.verifierFaultDigest(f)); // includes the accused
        vm.expectRevert(abi.encodeWithSelector(Staking.AccusedSigned.selector, accused));
        staking.slashVerifier(f, sigs);
        uint256[] memory self = new uint256[](1);
        self[0] = verifierKeys[3];
        sigs = quorumSigs(self, staking.verifierFaultDigest(f));
        vm.expectRevert(abi.encodeWithSelector(Staking.AccusedSigned.selector, accused));
        staking.slashVerifier(f, sigs);
    }

    function testFuzz_slashVerifier_revertsAccusedSigned(uint96[4] memory stakes, uint8 accusedIndex, uint16 bps)
        public
    {
        _customSet(stakes);
        address who = vm.addr(verifierKeys[accusedIndex % 4]);
        VerifierFault memory f = faultFor(who, HONEYPOT, keccak256("e"), uint16(bound(bps, 0, 5_000)));
        bytes[] memory sigs = allVerifierSigs(staking.verifierFaultDigest(f));
        vm.expectRevert(abi.encodeWithSelector(Staking.AccusedSigned.selector, who));
        staking.slashVerifier(f, sigs);
    }

    function test_slashVerifier_revertsEvidenceReuse() public {
        verifierSlash(accused, AGAINST, keccak256("vote"), 1_000, reporter);
        // same evidence again, with another kind and bps: still a reuse
        VerifierFault memory f = faultFor(accused, HONEYPOT, keccak256("vote"), 3_000);
        bytes[] memory sigs = otherVerifierSigs(f);
        vm.expectRevert(
            abi.encodeWithSelector(Staking.EvidenceAlreadyUsed.selector, _evidenceId(accused, keccak256("vote")))
        );
        staking.slashVerifier(f, sigs);
    }

    function testFuzz_slashVerifier_revertsEvidenceReuse(bytes32 evidence, uint16 bps1, uint16 bps2, bool kind2)
        public
    {
        verifierSlash(accused, AGAINST, evidence, uint16(bound(bps1, 0, 5_000)), reporter);
        VerifierFault memory f = faultFor(accused, kind2 ? HONEYPOT : AGAINST, evidence, uint16(bound(bps2, 0, 5_000)));
        bytes[] memory sigs = otherVerifierSigs(f);
        vm.expectRevert(abi.encodeWithSelector(Staking.EvidenceAlreadyUsed.selector, _evidenceId(accused, evidence)));
        staking.slashVerifier(f, sigs);
    }

    function test_slashVerifier_revertsInactiveVerifier() public {
        // never registered
        address stranger = vm.addr(0xFACE);
        VerifierFault memory f = faultFor(stranger, AGAINST, keccak256("e"), 1_000);
        bytes[] memory sigs = otherVerifierSigs(f);
        vm.expectRevert(
            abi.encodeWithSelector(Staking.UnexpectedVerifierStatus.selector, stranger, Staking.VerifierStatus.None)
        );
        staking.slashVerifier(f, sigs);

        // registered, not yet active (never part of the quorum)
        addVerifier(0xFACE, MIN_VERIFIER_STAKE);
        sigs = otherVerifierSigs(f);
        vm.expectRevert(
            abi.encodeWithSelector(Staking.UnexpectedVerifierStatus.selector, stranger, Staking.VerifierStatus.Pending)
        );
        staking.slashVerifier(f, sigs);

        // a pending verifier cannot sign either
        uint256[] memory keys = new uint256[](3);
        keys[0] = verifierKeys[0];
        keys[1] = verifierKeys[1];
        keys[2] = 0xFACE;
        f = faultFor(accused, AGAINST, keccak256("e"), 1_000);
        sigs = quorumSigs(keys, staking.verifierFaultDigest(f));
        vm.expectRevert(abi.encodeWithSelector(Staking.NotActiveVerifier.selector, stranger));
        staking.slashVerifier(f, sigs);

        // withdrawn: the record is gone
        vm.prank(accused);
        staking.requestVerifierUnbond();
        vm.warp(block.timestamp + UNBONDING_DELAY);
        vm.prank(accused);
        staking.withdrawVerifier();
        f = faultFor(accused, AGAINST, keccak256("e"), 1_000);
        sigs = otherVerifierSigs(f);
        vm.expectRevert(
            abi.encodeWithSelector(Staking.UnexpectedVerifierStatus.selector, accused, Staking.VerifierStatus.None)
        );
        staking.slashVerifier(f, sigs);
    }

    function testFuzz_slashVerifier_revertsInactiveVerifier(address who, bool pending) public {
        for (uint256 i; i < verifierKeys.length; ++i) {
            vm.assume(who != vm.addr(verifierKeys[i]));
        }
        vm.assume(uint160(who) > 0x10); // not a precompile
        vm.assume(who != address(vm) && who != address(this) && who != address(staking));
        if (pending) {
            vm.deal(who, MIN_VERIFIER_STAKE);
            vm.prank(who);
            staking.registerVerifier{value: MIN_VERIFIER_STAKE}();
        }
        VerifierFault memory f = faultFor(who, HONEYPOT, keccak256("e"), 1_000);
        bytes[] memory sigs = otherVerifierSigs(f);
        Staking.VerifierStatus status = pending ? Staking.VerifierStatus.Pending : Staking.VerifierStatus.None;
        vm.expectRevert(abi.encodeWithSelector(Staking.UnexpectedVerifierStatus.selector, who, status));
        staking.slashVerifier(f, sigs);
    }

    function test_slashVerifier_revertsBpsOverCap() public {
        assertEq(uint256(staking.MAX_VERIFIER_SLASH_BPS()), 5_000);
        VerifierFault memory f = faultFor(accused, AGAINST, keccak256("e"), 5_001);
        bytes[] memory sigs = otherVerifierSigs(f);
        vm.expectRevert(abi.encodeWithSelector(Staking.VerifierSlashBpsTooHigh.selector, 5_001, 5_000));
        staking.slashVerifier(f, sigs);
    }

    function testFuzz_slashVerifier_revertsBpsOverCap(uint16 bps) public {
        bps = uint16(bound(bps, 5_001, type(uint16).max));
        VerifierFault memory f = faultFor(accused, AGAINST, keccak256("e"), bps);
        bytes[] memory sigs = otherVerifierSigs(f);
        vm.expectRevert(abi.encodeWithSelector(Staking.VerifierSlashBpsTooHigh.selector, bps, 5_000));
        staking.slashVerifier(f, sigs);
    }

    function test_slashVerifier_revertsInvalidKindAndExpired() public {
        VerifierFault memory f = faultFor(accused, AGAINST, keccak256("e"), 1_000);
        f.kind = 2;
        bytes[] memory sigs = otherVerifierSigs(f);
        vm.expectRevert(abi.encodeWithSelector(Staking.InvalidFaultKind.selector, uint8(2)));
        staking.slashVerifier(f, sigs);

        f = faultFor(accused, AGAINST, keccak256("e"), 1_000);
        sigs = otherVerifierSigs(f);
        vm.warp(f.deadline + 1);
        vm.expectRevert(abi.encodeWithSelector(Staking.VerdictExpired.selector, f.deadline, block.timestamp));
        staking.slashVerifier(f, sigs);
    }

    function testFuzz_slashVerifier_revertsInvalidKind(uint8 kind) public {
        kind = uint8(bound(kind, 2, type(uint8).max));
        VerifierFault memory f = faultFor(accused, AGAINST, keccak256("e"), 1_000);
        f.kind = kind;
        bytes[] memory sigs = otherVerifierSigs(f);
        vm.expectRevert(abi.encodeWithSelector(Staking.InvalidFaultKind.selector, kind));
        staking.slashVerifier(f, sigs);
    }

    function test_slashVerifier_revertsSoleVerifier() public {
        deployStaking();
        delete verifierKeys;
        setUpVerifiers(1, 20 ether);
        VerifierFault memory f = faultFor(vm.addr(verifierKeys[0]), AGAINST, keccak256("e"), 1_000);
        vm.expectRevert(Staking.NoVerifiers.selector); // nobody else can judge it
        staking.slashVerifier(f, new bytes[](0));
    }

    // ----- EIP-712 ----------------------------------------------------------------------------

    function _manualDigest(VerifierFault memory f) internal view returns (bytes32) {
        bytes32 ds = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("veriswarm"),
                keccak256("1"),
                block.chainid,
                address(staking)
            )
        );
        bytes32 typeHash = keccak256(
            "VerifierFault(address verifier,uint8 kind,bytes32 evidenceHash,uint16 slashBps,uint64 deadline)"
        );
        return keccak256(abi.encodePacked("\x19\x01", ds, keccak256(abi.encode(typeHash, f))));
    }

    function test_verifierFaultDigest_matchesManualEncoding() public view {
        VerifierFault memory f = faultFor(accused, AGAINST, keccak256("vote"), 2_000);
        assertEq(staking.verifierFaultDigest(f), _manualDigest(f));
        assertEq(
            VeriswarmHashes.VERIFIER_FAULT_TYPEHASH,
            keccak256("VerifierFault(address verifier,uint8 kind,bytes32 evidenceHash,uint16 slashBps,uint64 deadline)")
        );
    }

    function testFuzz_verifierFaultDigest_matchesManualEncoding(VerifierFault memory f) public view {
        assertEq(staking.verifierFaultDigest(f), _manualDigest(f));
    }
}
