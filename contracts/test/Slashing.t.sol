// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Fixtures} from "./utils/Fixtures.sol";
import {Staking} from "../src/Staking.sol";
import {Receipt, Verdict, VeriswarmHashes} from "../src/VeriswarmTypes.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @notice Equivocation and verdict slashing, veto window, finalization, jail and credits.
contract SlashingTest is Fixtures {
    uint256 internal constant NODE_KEY = 0xB0B;
    address internal node;
    address internal reporter = address(0x5EE);

    event SlashProposed(
        uint256 indexed slashId,
        address indexed node,
        Staking.SlashKind kind,
        bytes32 evidenceId,
        uint256 amount,
        address reporter,
        uint64 executableAt
    );
    event SlashVetoed(uint256 indexed slashId, address indexed node, uint256 restored, uint256 bondForfeited);
    event SlashExecuted(
        uint256 indexed slashId, address indexed node, uint256 amount, uint256 reporterReward, uint64 jailedUntil
    );

    function setUp() public {
        deployStaking();
        setUpVerifiers(3, 10 ether);
        node = registerNode(NODE_KEY, 4 ether, 0);
    }

    // ----- EIP-712 digest --------------------------------------------------------------------

    /// @dev Rebuilds the receipt digest from first principles (no OZ, no contract helpers).
    function _manualDigest(Receipt memory r, address verifyingContract) internal view returns (bytes32) {
        bytes32 domainTypeHash =
            keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
        bytes32 ds = keccak256(
            abi.encode(domainTypeHash, keccak256("veriswarm"), keccak256("1"), block.chainid, verifyingContract)
        );
        bytes32 typeHash = keccak256(
            "Receipt(bytes32 manifestHash,uint32 shardIndex,bytes32 sessionId,uint32 step,uint32 startPos,uint32 numTokens,bytes32 inputHash,bytes32 contextHash,bytes32 outputHash,bytes32 requestNonce,uint64 timestampMs)"
        );
        // a struct of static members ABI-encodes in place as its 11 words
        bytes32 structHash = keccak256(abi.encode(typeHash, r));
        return keccak256(abi.encodePacked("\x19\x01", ds, structHash));
    }

    function test_receiptDigest_matchesManualEncoding() public view {
        Receipt memory r = sampleReceipt(keccak256("ctx"), keccak256("out"));
        assertEq(staking.receiptDigest(r), _manualDigest(r, address(staking)));
        assertEq(
            VeriswarmHashes.RECEIPT_TYPEHASH,
            keccak256(
                "Receipt(bytes32 manifestHash,uint32 shardIndex,bytes32 sessionId,uint32 step,uint32 startPos,uint32 numTokens,bytes32 inputHash,bytes32 contextHash,bytes32 outputHash,bytes32 requestNonce,uint64 timestampMs)"
            )
        );
    }

    function testFuzz_receiptDigest_matchesManualEncoding(Receipt memory r) public view {
        assertEq(staking.receiptDigest(r), _manualDigest(r, address(staking)));
    }

    // ----- equivocation ----------------------------------------------------------------------

    function test_slashEquivocation() public {
        Receipt memory a = sampleReceipt(keccak256("ctx"), keccak256("out-a"));
        Receipt memory b = sampleReceipt(keccak256("ctx"), keccak256("out-b"));
        b.sessionId = keccak256("another session"); // ignored by the conflict rule
        b.timestampMs += 5;
        bytes memory sa = signReceipt(NODE_KEY, a);
        bytes memory sb = signReceipt(NODE_KEY, b);
        bytes32 evidenceId =
            keccak256(abi.encode(Staking.SlashKind.Equivocation, node, MANIFEST, uint32(0), keccak256("ctx")));

        vm.deal(reporter, BOND);
        vm.expectEmit(true, true, true, true, address(staking));
        emit SlashProposed(
            1,
            node,
            Staking.SlashKind.Equivocation,
            evidenceId,
            2 ether,
            reporter,
            uint64(block.timestamp) + VETO_WINDOW
        );
        vm.prank(reporter);
        uint256 id = staking.slashEquivocation{value: BOND}(a, sa, b, sb);

        assertEq(id, 1);
        assertEq(uint256(staking.getNode(node).stake), 2 ether); // 50% escrowed
        assertEq(slashAmount(id), 2 ether);
        assertTrue(staking.evidenceUsed(evidenceId));
        assertTrue(staking.isJailed(node));
        assertFalse(staking.isActive(node));
        (address[] memory listed,) = staking.activeNodes(MANIFEST, 0);
        assertEq(listed.length, 0);
        assertEq(address(staking).balance, 30 ether + 4 ether + BOND);
    }

    function testFuzz_slashEquivocation(uint96 stake, Receipt memory a, bytes32 outB, bytes32 sessionB) public {
        vm.assume(a.outputHash != outB);
        stake = uint96(bound(stake, MIN_STAKE, 1_000 ether));
        Receipt memory b = abi.decode(abi.encode(a), (Receipt)); // copy
        b.outputHash = outB;
        b.sessionId = sessionB;
        b.timestampMs = a.timestampMs ^ 1;
        address n = registerNode(0xC0FFEE, stake, 9);
        uint256 id = _equivocateWith(0xC0FFEE, a, b);
        uint256 expected = uint256(stake) * EQUIVOCATION_BPS / 10_000;
        assertEq(slashAmount(id), expected);
        assertEq(uint256(staking.getNode(n).stake), stake - expected);
    }

    function _equivocateWith(uint256 key, Receipt memory a, Receipt memory b) internal returns (uint256) {
        bytes memory sa = signReceipt(key, a);
        bytes memory sb = signReceipt(key, b);
        vm.deal(reporter, BOND);
        vm.prank(reporter);
        return staking.slashEquivocation{value: BOND}(a, sa, b, sb);
    }

    function test_slashEquivocation_revertsNotConflicting() public {
        Receipt memory a = sampleReceipt(keccak256("ctx"), keccak256("out"));
        Receipt memory b = sampleReceipt(keccak256("ctx"), keccak256("out"));
        b.requestNonce = keccak256("n2");
        _expectNotConflicting(a, b); // same output
        b.outputHash = keccak256("out-b");
        b.contextHash = keccak256("ctx-2");
        _expectNotConflicting(a, b); // different context
        b.contextHash = a.contextHash;
        b.shardIndex = 1;
        _expectNotConflicting(a, b); // different shard
        b.shardIndex = 0;
        b.manifestHash = keccak256("m2");
        _expectNotConflicting(a, b); // different manifest
    }

    function testFuzz_slashEquivocation_revertsNotConflicting(bytes32 ctxB, uint32 shardB, bytes32 manifestB) public {
        Receipt memory a = sampleReceipt(keccak256("ctx"), keccak256("out-a"));
        Receipt memory b = sampleReceipt(ctxB, keccak256("out-b"));
        b.shardIndex = shardB;
        b.manifestHash = manifestB;
        vm.assume(ctxB != a.contextHash || shardB != a.shardIndex || manifestB != a.manifestHash);
        _expectNotConflicting(a, b);
    }

    function _expectNotConflicting(Receipt memory a, Receipt memory b) internal {
        bytes memory sa = signReceipt(NODE_KEY, a);
        bytes memory sb = signReceipt(NODE_KEY, b);
        vm.deal(reporter, BOND);
        vm.prank(reporter);
        vm.expectRevert(Staking.NotConflicting.selector);
        staking.slashEquivocation{value: BOND}(a, sa, b, sb);
    }

    function test_slashEquivocation_revertsSignerMismatch() public {
        Receipt memory a = sampleReceipt(keccak256("ctx"), keccak256("out-a"));
        Receipt memory b = sampleReceipt(keccak256("ctx"), keccak256("out-b"));
        bytes memory sa = signReceipt(NODE_KEY, a);
        bytes memory sb = signReceipt(0xE1E, b);
        vm.deal(reporter, BOND);
        vm.prank(reporter);
        vm.expectRevert(abi.encodeWithSelector(Staking.SignerMismatch.selector, node, vm.addr(0xE1E)));
        staking.slashEquivocation{value: BOND}(a, sa, b, sb);
    }

    function test_slashEquivocation_revertsUnregisteredSigner() public {
        Receipt memory a = sampleReceipt(keccak256("ctx"), keccak256("out-a"));
        Receipt memory b = sampleReceipt(keccak256("ctx"), keccak256("out-b"));
        bytes memory sa = signReceipt(0xE1E, a);
        bytes memory sb = signReceipt(0xE1E, b);
        vm.deal(reporter, BOND);
        vm.prank(reporter);
        vm.expectRevert(abi.encodeWithSelector(Staking.NotRegistered.selector, vm.addr(0xE1E)));
        staking.slashEquivocation{value: BOND}(a, sa, b, sb);
    }

    function test_slashEquivocation_revertsWrongBond() public {
        Receipt memory a = sampleReceipt(keccak256("ctx"), keccak256("out-a"));
        Receipt memory b = sampleReceipt(keccak256("ctx"), keccak256("out-b"));
        bytes memory sa = signReceipt(NODE_KEY, a);
        bytes memory sb = signReceipt(NODE_KEY, b);
        vm.deal(reporter, 1 ether);
        vm.prank(reporter);
        vm.expectRevert(abi.encodeWithSelector(Staking.WrongBond.selector, 0, BOND));
        staking.slashEquivocation(a, sa, b, sb);
    }

    function testFuzz_slashEquivocation_revertsWrongBond(uint256 bond) public {
        vm.assume(bond != BOND);
        bond = bound(bond, 0, 10 ether);
        vm.assume(bond != BOND);
        Receipt memory a = sampleReceipt(keccak256("ctx"), keccak256("out-a"));
        Receipt memory b = sampleReceipt(keccak256("ctx"), keccak256("out-b"));
        bytes memory sa = signReceipt(NODE_KEY, a);
        bytes memory sb = signReceipt(NODE_KEY, b);
        vm.deal(reporter, bond);
        vm.prank(reporter);
        vm.expectRevert(abi.encodeWithSelector(Staking.WrongBond.selector, bond, BOND));
        staking.slashEquivocation{value: bond}(a, sa, b, sb);
    }

    function test_slashEquivocation_revertsEvidenceReuse() public {
        equivocate(NODE_KEY, keccak256("ctx"), reporter);
        bytes32 evidenceId =
            keccak256(abi.encode(Staking.SlashKind.Equivocation, node, MANIFEST, uint32(0), keccak256("ctx")));
        // same pair again
        Receipt memory a = sampleReceipt(keccak256("ctx"), keccak256("out-a"));
        Receipt memory b = sampleReceipt(keccak256("ctx"), keccak256("out-b"));
        b.requestNonce = keccak256("other-nonce");
        bytes memory sa = signReceipt(NODE_KEY, a);
        bytes memory sb = signReceipt(NODE_KEY, b);
        vm.deal(reporter, BOND);
        vm.prank(reporter);
        vm.expectRevert(abi.encodeWithSelector(Staking.EvidenceAlreadyUsed.selector, evidenceId));
        staking.slashEquivocation{value: BOND}(a, sa, b, sb);
        // swapped order, and a third output for the same context: same evidence
        Receipt memory c = sampleReceipt(keccak256("ctx"), keccak256("out-c"));
        bytes memory sc = signReceipt(NODE_KEY, c);
        vm.deal(reporter, BOND);
        vm.prank(reporter);
        vm.expectRevert(abi.encodeWithSelector(Staking.EvidenceAlreadyUsed.selector, evidenceId));
        staking.slashEquivocation{value: BOND}(c, sc, a, sa);
    }

    function testFuzz_slashEquivocation_revertsEvidenceReuse(bytes32 context, bytes32 outC) public {
        vm.assume(outC != keccak256("out-a"));
        equivocate(NODE_KEY, context, reporter);
        Receipt memory a = sampleReceipt(context, keccak256("out-a"));
        Receipt memory c = sampleReceipt(context, outC);
        bytes memory sa = signReceipt(NODE_KEY, a);
        bytes memory sc = signReceipt(NODE_KEY, c);
        bytes32 evidenceId = keccak256(abi.encode(Staking.SlashKind.Equivocation, node, MANIFEST, uint32(0), context));
        vm.deal(reporter, BOND);
        vm.prank(reporter);
        vm.expectRevert(abi.encodeWithSelector(Staking.EvidenceAlreadyUsed.selector, evidenceId));
        staking.slashEquivocation{value: BOND}(a, sa, c, sc);
    }

    function test_slashEquivocation_rejectsMalleableSignature() public {
        Receipt memory a = sampleReceipt(keccak256("ctx"), keccak256("out-a"));
        Receipt memory b = sampleReceipt(keccak256("ctx"), keccak256("out-b"));
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(NODE_KEY, staking.receiptDigest(a));
        uint256 n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;
        bytes32 highS = bytes32(n - uint256(s));
        bytes memory sa = abi.encodePacked(r, highS, v == 27 ? uint8(28) : uint8(27));
        bytes memory sb = signReceipt(NODE_KEY, b);
        vm.deal(reporter, BOND);
        vm.prank(reporter);
        vm.expectRevert(abi.encodeWithSelector(ECDSA.ECDSAInvalidSignatureS.selector, highS));
        staking.slashEquivocation{value: BOND}(a, sa, b, sb);
    }

    function test_unbondingNodeStaysSlashable() public {
        vm.prank(node);
        staking.requestUnbond();
        vm.warp(block.timestamp + UNBONDING_DELAY - 1);
        uint256 id = equivocate(NODE_KEY, keccak256("late evidence"), reporter);
        assertEq(slashAmount(id), 2 ether);
        vm.warp(block.timestamp + 1);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(Staking.NodeJailed.selector, node, uint64(0), uint32(1)));
        staking.withdraw();
    }

    // ----- verdicts ------------------------------------------------------------------------

    function test_slashWithVerdict() public {
        uint256 id = verdictSlash(node, keccak256("bad output"), 2_500, reporter);
        assertEq(slashAmount(id), 1 ether);
        assertEq(uint256(staking.getNode(node).stake), 3 ether);
        assertTrue(staking.isJailed(node));
        bytes32 evidenceId = keccak256(abi.encode(Staking.SlashKind.Verdict, node, keccak256("bad output")));
        assertTrue(staking.evidenceUsed(evidenceId));
    }

    function testFuzz_slashWithVerdict(uint16 bps, uint96 stake, bytes32 evidence) public {
        bps = uint16(bound(bps, 0, 10_000));
        stake = uint96(bound(stake, MIN_STAKE, 1_000 ether));
        address n = registerNode(0xC0FFEE, stake, 1);
        uint256 id = verdictSlash(n, evidence, bps, reporter);
        uint256 expected = uint256(stake) * bps / 10_000;
        assertEq(slashAmount(id), expected);
        assertLe(slashAmount(id), stake, "slash exceeds stake");
        assertEq(uint256(staking.getNode(n).stake), stake - expected);
    }

    function test_slashWithVerdict_revertsEvidenceReuse() public {
        verdictSlash(node, keccak256("bad output"), 100, reporter);
        Verdict memory v = verdictFor(node, keccak256("bad output"), 9_000); // other bps, same evidence
        bytes[] memory sigs = allVerifierSigs(staking.verdictDigest(v));
        bytes32 evidenceId = keccak256(abi.encode(Staking.SlashKind.Verdict, node, keccak256("bad output")));
        vm.deal(reporter, BOND);
        vm.prank(reporter);
        vm.expectRevert(abi.encodeWithSelector(Staking.EvidenceAlreadyUsed.selector, evidenceId));
        staking.slashWithVerdict{value: BOND}(v, sigs);
    }

    function testFuzz_slashWithVerdict_revertsEvidenceReuse(bytes32 evidence, uint16 bps1, uint16 bps2) public {
        bps1 = uint16(bound(bps1, 0, 10_000));
        bps2 = uint16(bound(bps2, 0, 10_000));
        verdictSlash(node, evidence, bps1, reporter);
        Verdict memory v = verdictFor(node, evidence, bps2);
        bytes[] memory sigs = allVerifierSigs(staking.verdictDigest(v));
        vm.deal(reporter, BOND);
        vm.prank(reporter);
        vm.expectRevert(
            abi.encodeWithSelector(
                Staking.EvidenceAlreadyUsed.selector, keccak256(abi.encode(Staking.SlashKind.Verdict, node, evidence))
            )
        );
        staking.slashWithVerdict{value: BOND}(v, sigs);
    }

    function test_slashWithVerdict_reverts() public {
        Verdict memory v = verdictFor(node, keccak256("e"), 10_001);
        bytes[] memory sigs = allVerifierSigs(staking.verdictDigest(v));
        vm.deal(reporter, 1 ether);
        vm.prank(reporter);
        vm.expectRevert(abi.encodeWithSelector(Staking.InvalidSlashBps.selector, 10_001));
        staking.slashWithVerdict{value: BOND}(v, sigs);

        v = verdictFor(node, keccak256("e"), 100);
        sigs = allVerifierSigs(staking.verdictDigest(v));
        vm.warp(v.deadline + 1);
        vm.prank(reporter);
        vm.expectRevert(abi.encodeWithSelector(Staking.VerdictExpired.selector, v.deadline, block.timestamp));
        staking.slashWithVerdict{value: BOND}(v, sigs);

        v = verdictFor(node, keccak256("e"), 100);
        uint256[] memory one = new uint256[](1);
        one[0] = verifierKeys[0];
        sigs = quorumSigs(one, staking.verdictDigest(v));
        vm.prank(reporter);
        vm.expectRevert(abi.encodeWithSelector(Staking.QuorumNotReached.selector, 10 ether, 30 ether));
        staking.slashWithVerdict{value: BOND}(v, sigs);

        address stranger = vm.addr(0xFACE);
        v = verdictFor(stranger, keccak256("e"), 100);
        sigs = allVerifierSigs(staking.verdictDigest(v));
        vm.prank(reporter);
        vm.expectRevert(abi.encodeWithSelector(Staking.NotRegistered.selector, stranger));
        staking.slashWithVerdict{value: BOND}(v, sigs);
    }

    function testFuzz_slashWithVerdict_tamperedVerdictFails(uint16 bps) public {
        bps = uint16(bound(bps, 0, 10_000));
        Verdict memory v = verdictFor(node, keccak256("e"), 100);
        bytes[] memory sigs = allVerifierSigs(staking.verdictDigest(v));
        vm.assume(bps != 100);
        v.slashBps = bps; // signatures now recover to unrelated addresses
        vm.deal(reporter, BOND);
        vm.prank(reporter);
        vm.expectRevert();
        staking.slashWithVerdict{value: BOND}(v, sigs);
    }

    function test_slashNeverExceedsStake_repeatedFullSlashes() public {
        uint256 id1 = verdictSlash(node, keccak256("e1"), 10_000, reporter);
        uint256 id2 = verdictSlash(node, keccak256("e2"), 10_000, reporter);
        uint256 id3 = equivocate(NODE_KEY, keccak256("ctx"), reporter);
        assertEq(slashAmount(id1), 4 ether);
        assertEq(slashAmount(id2), 0);
        assertEq(slashAmount(id3), 0);
        assertEq(uint256(staking.getNode(node).pendingSlashes), 3);
    }

    // ----- finalize ------------------------------------------------------------------------

    function test_finalizeSlash() public {
        uint256 id = equivocate(NODE_KEY, keccak256("ctx"), reporter);
        vm.expectRevert(
            abi.encodeWithSelector(Staking.VetoWindowOpen.selector, id, uint64(block.timestamp) + VETO_WINDOW)
        );
        staking.finalizeSlash(id);

        vm.warp(block.timestamp + VETO_WINDOW);
        uint64 jailedUntil = uint64(block.timestamp) + JAIL_DURATION;
        vm.expectEmit(true, true, true, true, address(staking));
        emit SlashExecuted(id, node, 2 ether, 0.2 ether, jailedUntil);
        staking.finalizeSlash(id);

        assertEq(staking.owed(reporter), BOND + 0.2 ether);
        assertEq(staking.owed(TREASURY), 1.8 ether);
        assertEq(uint256(uint8(slashStatus(id))), uint256(uint8(Staking.SlashStatus.Executed)));
        Staking.Node memory n = staking.getNode(node);
        assertEq(uint256(n.pendingSlashes), 0);
        assertEq(uint256(n.jailedUntil), jailedUntil);
        assertTrue(staking.isJailed(node));

        vm.expectRevert(abi.encodeWithSelector(Staking.SlashNotPending.selector, id, Staking.SlashStatus.Executed));
        staking.finalizeSlash(id);

        // credits are pulled
        uint256 before = reporter.balance;
        vm.prank(reporter);
        staking.withdrawOwed();
        assertEq(reporter.balance, before + BOND + 0.2 ether);
        assertEq(staking.owed(reporter), 0);
        vm.prank(TREASURY);
        staking.withdrawOwed();
        assertEq(TREASURY.balance, 1.8 ether);

        // jail ends; stake 2 ether >= minStake, so the node is listed again
        vm.warp(jailedUntil);
        assertTrue(staking.isActive(node));
    }

    function testFuzz_finalizeSlash_splits(uint16 bps, uint96 stake) public {
        bps = uint16(bound(bps, 0, 10_000));
        stake = uint96(bound(stake, MIN_STAKE, 1_000 ether));
        address n = registerNode(0xC0FFEE, stake, 1);
        uint256 id = verdictSlash(n, keccak256("e"), bps, reporter);
        uint256 amount = slashAmount(id);
        vm.warp(block.timestamp + VETO_WINDOW);
        staking.finalizeSlash(id);
        uint256 reward = amount * REPORTER_BPS / 10_000;
        assertEq(staking.owed(reporter), BOND + reward);
        assertEq(staking.owed(TREASURY), amount - reward);
        assertLe(reward, amount / 10, "reporter share above 10%");
        assertEq(uint256(staking.getNode(n).stake) + amount, stake);
    }

    function test_finalizeSlash_unknownId() public {
        vm.expectRevert(abi.encodeWithSelector(Staking.SlashNotPending.selector, 42, Staking.SlashStatus.None));
        staking.finalizeSlash(42);
    }

    function test_jailBlocksWithdrawUntilOver() public {
        vm.prank(node);
        staking.requestUnbond();
        vm.warp(block.timestamp + 6 days);
        uint256 id = verdictSlash(node, keccak256("e"), 1_000, reporter);
        vm.warp(block.timestamp + VETO_WINDOW); // unbonding delay now over too
        staking.finalizeSlash(id);
        uint64 jailedUntil = uint64(block.timestamp) + JAIL_DURATION;
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(Staking.NodeJailed.selector, node, jailedUntil, uint32(0)));
        staking.withdraw();
        vm.warp(jailedUntil);
        uint256 before = node.balance;
        vm.prank(node);
        staking.withdraw();
        assertEq(node.balance, before + 3.6 ether);
    }

    function test_pendingSlashBlocksWithdraw() public {
        vm.prank(node);
        staking.requestUnbond();
        verdictSlash(node, keccak256("e"), 1_000, reporter);
        vm.warp(block.timestamp + UNBONDING_DELAY);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(Staking.NodeJailed.selector, node, uint64(0), uint32(1)));
        staking.withdraw();
    }

    // ----- veto ----------------------------------------------------------------------------

    function test_vetoSlash() public {
        uint256 id = verdictSlash(node, keccak256("e"), 5_000, reporter);
        (,,,,,,, bytes32 evidenceId) = staking.slashes(id);
        bytes[] memory sigs = allVerifierSigs(staking.vetoDigest(id, evidenceId));
        vm.expectEmit(true, true, true, true, address(staking));
        emit SlashVetoed(id, node, 2 ether, BOND);
        staking.vetoSlash(id, sigs);

        assertEq(uint256(staking.getNode(node).stake), 4 ether);
        assertEq(staking.owed(node), BOND); // reporter's bond forfeited to the accused node
        assertEq(staking.owed(reporter), 0);
        assertFalse(staking.isJailed(node));
        assertTrue(staking.isActive(node));
        assertTrue(staking.evidenceUsed(evidenceId)); // vetoed evidence stays consumed

        vm.warp(block.timestamp + VETO_WINDOW);
        vm.expectRevert(abi.encodeWithSelector(Staking.SlashNotPending.selector, id, Staking.SlashStatus.Vetoed));
        staking.finalizeSlash(id);
    }

    function testFuzz_vetoSlash_window(uint32 wait) public {
        wait = uint32(bound(wait, 0, 2 * VETO_WINDOW));
        uint256 id = verdictSlash(node, keccak256("e"), 5_000, reporter);
        uint64 executableAt = uint64(block.timestamp) + VETO_WINDOW;
        (,,,,,,, bytes32 evidenceId) = staking.slashes(id);
        bytes[] memory sigs = allVerifierSigs(staking.vetoDigest(id, evidenceId));
        vm.warp(block.timestamp + wait);
        if (wait >= VETO_WINDOW) {
            vm.expectRevert(abi.encodeWithSelector(Staking.VetoWindowClosed.selector, id, executableAt));
            staking.vetoSlash(id, sigs);
        } else {
            staking.vetoSlash(id, sigs);
            assertEq(uint256(staking.getNode(node).stake), 4 ether);
        }
    }

    function test_vetoSlash_needsQuorum() public {
        uint256 id = verdictSlash(node, keccak256("e"), 5_000, reporter);
        (,,,,,,, bytes32 evidenceId) = staking.slashes(id);
        uint256[] memory one = new uint256[](1);
        one[0] = verifierKeys[1];
        bytes[] memory sigs = quorumSigs(one, staking.vetoDigest(id, evidenceId));
        vm.expectRevert(abi.encodeWithSelector(Staking.QuorumNotReached.selector, 10 ether, 30 ether));
        staking.vetoSlash(id, sigs);
    }

    function test_withdrawOwed_revertsWhenNothing() public {
        vm.prank(reporter);
        vm.expectRevert(Staking.ZeroAmount.selector);
        staking.withdrawOwed();
    }
}
