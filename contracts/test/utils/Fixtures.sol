// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Test} from "./Test.sol";
import {Staking} from "../../src/Staking.sol";
import {Rewards} from "../../src/Rewards.sol";
import {IVerifierQuorum} from "../../src/interfaces/IVerifierQuorum.sol";
import {Receipt, Verdict, VerifierFault} from "../../src/VeriswarmTypes.sol";

/// @notice Shared deployment, keys and signing helpers for the veriswarm tests.
abstract contract Fixtures is Test {
    uint256 internal constant MIN_STAKE = 1 ether;
    uint256 internal constant MIN_VERIFIER_STAKE = 10 ether;
    uint256 internal constant BOND = 0.1 ether;
    uint64 internal constant CHALLENGE_WINDOW = 1 days;
    uint64 internal constant UNBONDING_DELAY = 7 days;
    uint64 internal constant VETO_WINDOW = 2 days;
    uint64 internal constant JAIL_DURATION = 3 days;
    uint64 internal constant ACTIVATION_DELAY = 1 days;
    uint16 internal constant REPORTER_BPS = 1_000;
    uint16 internal constant EQUIVOCATION_BPS = 5_000;
    address internal constant TREASURY = address(0x7EA5);

    bytes32 internal constant MANIFEST = keccak256("veriswarm/test-manifest");
    string internal constant ENDPOINT = "https://node.example:8443";

    Staking internal staking;

    uint256[] internal verifierKeys;

    function defaultParams() internal pure returns (Staking.Params memory p) {
        p = Staking.Params({
            minStake: MIN_STAKE,
            minVerifierStake: MIN_VERIFIER_STAKE,
            challengeBond: BOND,
            challengeWindow: CHALLENGE_WINDOW,
            unbondingDelay: UNBONDING_DELAY,
            vetoWindow: VETO_WINDOW,
            jailDuration: JAIL_DURATION,
            verifierActivationDelay: ACTIVATION_DELAY,
            reporterShareBps: REPORTER_BPS,
            equivocationSlashBps: EQUIVOCATION_BPS,
            treasury: TREASURY
        });
    }

    function deployStaking() internal {
        vm.warp(1_700_000_000);
        staking = new Staking(defaultParams());
        vm.label(address(staking), "Staking");
    }

    /// @dev Registers and activates `count` verifiers with keys 0xA11CE+i and `stakeEach` wei each.
    function setUpVerifiers(uint256 count, uint256 stakeEach) internal {
        for (uint256 i; i < count; ++i) {
            uint256 key = 0xA11CE + i;
            verifierKeys.push(key);
            addVerifier(key, stakeEach);
        }
        vm.warp(block.timestamp + ACTIVATION_DELAY);
        for (uint256 i; i < count; ++i) {
            staking.activateVerifier(vm.addr(verifierKeys[i]));
        }
    }

    function addVerifier(uint256 key, uint256 stake) internal {
        address v = vm.addr(key);
        vm.deal(v, stake);
        vm.prank(v);
        staking.registerVerifier{value: stake}();
    }

    function registerNode(uint256 key, uint256 stake, uint32 shard) internal returns (address node) {
        node = vm.addr(key);
        vm.deal(node, stake);
        vm.prank(node);
        staking.register{value: stake}(ENDPOINT, shard, MANIFEST);
    }

    // ----- signing -------------------------------------------------------------------------

    function signDigest(uint256 key, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(r, s, v);
    }

    /// @dev Signatures of `keys` over `digest`, ordered by signer address as checkQuorum requires.
    function quorumSigs(uint256[] memory keys, bytes32 digest) internal pure returns (bytes[] memory sigs) {
        uint256 n = keys.length;
        uint256[] memory sorted = new uint256[](n);
        for (uint256 i; i < n; ++i) {
            sorted[i] = keys[i];
        }
        for (uint256 i = 1; i < n; ++i) {
            uint256 k = sorted[i];
            address a = vm.addr(k);
            uint256 j = i;
            while (j > 0 && vm.addr(sorted[j - 1]) > a) {
                sorted[j] = sorted[j - 1];
                --j;
            }
            sorted[j] = k;
        }
        sigs = new bytes[](n);
        for (uint256 i; i < n; ++i) {
            sigs[i] = signDigest(sorted[i], digest);
        }
    }

    function allVerifierSigs(bytes32 digest) internal view returns (bytes[] memory) {
        return quorumSigs(verifierKeys, digest);
    }

    function sampleReceipt(bytes32 context, bytes32 output) internal pure returns (Receipt memory r) {
        r = Receipt({
            manifestHash: MANIFEST,
            shardIndex: 0,
            sessionId: keccak256("session"),
            step: 1,
            startPos: 0,
            numTokens: 8,
            inputHash: keccak256("input"),
            contextHash: context,
            outputHash: output,
            requestNonce: keccak256("nonce"),
            timestampMs: 1_700_000_000_000
        });
    }

    function signReceipt(uint256 key, Receipt memory r) internal view returns (bytes memory) {
        return signDigest(key, staking.receiptDigest(r));
    }

    /// @dev Opens an equivocation slash against the node of `key` as `reporter`.
    function equivocate(uint256 key, bytes32 context, address reporter) internal returns (uint256 slashId) {
        Receipt memory a = sampleReceipt(context, keccak256("out-a"));
        Receipt memory b = sampleReceipt(context, keccak256("out-b"));
        b.requestNonce = keccak256("other-nonce");
        bytes memory sa = signReceipt(key, a);
        bytes memory sb = signReceipt(key, b);
        vm.deal(reporter, BOND);
        vm.prank(reporter);
        slashId = staking.slashEquivocation{value: BOND}(a, sa, b, sb);
    }

    function verdictFor(address node, bytes32 evidence, uint16 bps) internal view returns (Verdict memory) {
        return Verdict({node: node, evidenceHash: evidence, slashBps: bps, deadline: uint64(block.timestamp + 1 hours)});
    }

    /// @dev Opens a verdict slash signed by all verifiers, as `reporter`.
    function verdictSlash(address node, bytes32 evidence, uint16 bps, address reporter)
        internal
        returns (uint256 slashId)
    {
        Verdict memory v = verdictFor(node, evidence, bps);
        bytes[] memory sigs = allVerifierSigs(staking.verdictDigest(v));
        vm.deal(reporter, BOND);
        vm.prank(reporter);
        slashId = staking.slashWithVerdict{value: BOND}(v, sigs);
    }

    function faultFor(address verifier, Staking.VerifierFaultKind kind, bytes32 evidence, uint16 bps)
        internal
        view
        returns (VerifierFault memory)
    {
        return VerifierFault({
            verifier: verifier,
            kind: uint8(kind),
            evidenceHash: evidence,
            slashBps: bps,
            deadline: uint64(block.timestamp + 1 hours)
        });
    }

    /// @dev Signatures over the fault's digest by every set-up verifier except the accused.
    function otherVerifierSigs(VerifierFault memory f) internal view returns (bytes[] memory) {
        uint256 n;
        for (uint256 i; i < verifierKeys.length; ++i) {
            if (vm.addr(verifierKeys[i]) != f.verifier) ++n;
        }
        uint256[] memory keys = new uint256[](n);
        n = 0;
        for (uint256 i; i < verifierKeys.length; ++i) {
            if (vm.addr(verifierKeys[i]) != f.verifier) keys[n++] = verifierKeys[i];
        }
        return quorumSigs(keys, staking.verifierFaultDigest(f));
    }

    /// @dev Slashes `verifier` with a fault signed by all the other set-up verifiers, as `reporter`.
    function verifierSlash(
        address verifier,
        Staking.VerifierFaultKind kind,
        bytes32 evidence,
        uint16 bps,
        address reporter
    ) internal returns (uint256 amount) {
        VerifierFault memory f = faultFor(verifier, kind, evidence, bps);
        bytes[] memory sigs = otherVerifierSigs(f);
        vm.prank(reporter);
        amount = staking.slashVerifier(f, sigs);
    }

    function verifierStake(address verifier) internal view returns (uint256 stake) {
        (uint128 s,,,) = staking.verifiers(verifier);
        stake = s;
    }

    function verifierStatus(address verifier) internal view returns (Staking.VerifierStatus status) {
        (,,, status) = staking.verifiers(verifier);
    }

    function slashAmount(uint256 slashId) internal view returns (uint256 amount) {
        (,,,,,, uint128 a,) = staking.slashes(slashId);
        amount = a;
    }

    function slashStatus(uint256 slashId) internal view returns (Staking.SlashStatus status) {
        (,,, status,,,,) = staking.slashes(slashId);
    }
}

/// @notice Merkle helpers matching OpenZeppelin's MerkleProof (sorted-pair keccak) and the
/// StandardMerkleTree leaf encoding used by {Rewards}.
library MerkleHelper {
    function leaf(address account, uint256 amount) internal pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(account, amount))));
    }

    function hashPair(bytes32 a, bytes32 b) internal pure returns (bytes32) {
        return a < b ? keccak256(abi.encode(a, b)) : keccak256(abi.encode(b, a));
    }

    /// @dev Root of a tree where an odd node at the end of a level is promoted unchanged.
    function root(bytes32[] memory leaves) internal pure returns (bytes32) {
        require(leaves.length > 0, "no leaves");
        bytes32[] memory level = leaves;
        while (level.length > 1) {
            level = _up(level);
        }
        return level[0];
    }

    function proof(bytes32[] memory leaves, uint256 index) internal pure returns (bytes32[] memory out) {
        bytes32[] memory buf = new bytes32[](64);
        uint256 n;
        bytes32[] memory level = leaves;
        while (level.length > 1) {
            uint256 sibling = index ^ 1;
            if (sibling < level.length) buf[n++] = level[sibling];
            level = _up(level);
            index >>= 1;
        }
        out = new bytes32[](n);
        for (uint256 i; i < n; ++i) {
            out[i] = buf[i];
        }
    }

    function _up(bytes32[] memory level) private pure returns (bytes32[] memory next) {
        next = new bytes32[]((level.length + 1) / 2);
        for (uint256 i; i < next.length; ++i) {
            uint256 l = 2 * i;
            next[i] = l + 1 < level.length ? hashPair(level[l], level[l + 1]) : level[l];
        }
    }
}

/// @notice Deploys Rewards next to Staking.
abstract contract RewardsFixtures is Fixtures {
    Rewards internal rewards;

    function deployRewards() internal {
        rewards = new Rewards(IVerifierQuorum(address(staking)));
        vm.label(address(rewards), "Rewards");
    }

    function settleEpoch(uint64 epoch, bytes32 root, uint256 total) internal {
        bytes[] memory sigs = allVerifierSigs(rewards.settlementDigest(epoch, root, total));
        rewards.settle(epoch, root, total, sigs);
    }
}
