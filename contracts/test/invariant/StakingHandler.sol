// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Vm} from "../utils/Vm.sol";
import {Staking} from "../../src/Staking.sol";
import {Receipt, Verdict, VerifierFault} from "../../src/VeriswarmTypes.sol";

/// @notice Drives {Staking} through random sequences of node, verifier and slashing actions for
/// the invariant tests, and keeps ghost state for what cannot be read back from the contract.
/// Calls that would revert are allowed to revert (fail_on_revert = false); ghost flags record
/// any property violation observed inside an action.
contract StakingHandler {
    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    uint256 internal constant NODE_COUNT = 5;
    uint256 internal constant VERIFIER_COUNT = 4;
    uint256 internal constant REPORTER_COUNT = 3;
    bytes32 internal constant MANIFEST = keccak256("veriswarm/test-manifest");

    Staking public immutable staking;
    address public immutable treasury;

    uint256[] public nodeKeys;
    uint256[] public verifierKeys;
    address[] public reporters;

    // ghost state
    uint256[] public slashIds;
    bool public ghostSlashExceededStake;
    bool public ghostEvidenceReused;
    bool public ghostWithdrawWhileJailed;
    uint256 public ghostSlashesOpened;
    bool public ghostVerifierSlashWrong;
    uint256 public ghostVerifierSlashes;
    mapping(bytes32 => bool) internal _seenEvidence;
    mapping(string => uint256) public calls;

    constructor(Staking staking_, uint256[] memory verifierKeys_) {
        staking = staking_;
        treasury = staking_.treasury();
        verifierKeys = verifierKeys_;
        for (uint256 i; i < NODE_COUNT; ++i) {
            nodeKeys.push(0xB0B000 + i);
        }
        for (uint256 i; i < REPORTER_COUNT; ++i) {
            reporters.push(address(uint160(0x5EE000 + i)));
        }
    }

    /// @dev Registers every node once so that action sequences start from a populated registry.
    function bootstrap() external {
        for (uint256 i; i < NODE_COUNT; ++i) {
            address node = vm.addr(nodeKeys[i]);
            vm.deal(node, 5 ether);
            vm.prank(node);
            staking.register{value: 5 ether}("http://node", uint32(i % 3), MANIFEST);
        }
    }

    // ----- node actions --------------------------------------------------------------------

    function register(uint256 nodeSeed, uint96 stake, uint32 shard) external {
        address node = _node(nodeSeed);
        stake = uint96(_bound(stake, staking.minStake(), 50 ether));
        vm.deal(node, node.balance + stake);
        vm.prank(node);
        staking.register{value: stake}("http://node", shard % 3, MANIFEST);
        calls["register"]++;
    }

    function addStake(uint256 nodeSeed, uint96 amount) external {
        address node = _node(nodeSeed);
        amount = uint96(_bound(amount, 1, 20 ether));
        vm.deal(node, node.balance + amount);
        vm.prank(node);
        staking.addStake{value: amount}();
        calls["addStake"]++;
    }

    function updateShard(uint256 nodeSeed, uint32 shard) external {
        vm.prank(_node(nodeSeed));
        staking.updateShard(MANIFEST, shard % 3);
        calls["updateShard"]++;
    }

    function requestUnbond(uint256 nodeSeed) external {
        vm.prank(_node(nodeSeed));
        staking.requestUnbond();
        calls["requestUnbond"]++;
    }

    /// @dev Waits out the unbonding delay and any jail period first, so exits actually happen;
    /// a pending slash still blocks the withdrawal (expected revert).
    function withdraw(uint256 nodeSeed) external {
        address node = _node(nodeSeed);
        Staking.Node memory n = staking.getNode(node);
        uint256 until = n.unlockAt > n.jailedUntil ? n.unlockAt : n.jailedUntil;
        if (until > block.timestamp) vm.warp(until);
        bool jailed = staking.isJailed(node);
        vm.prank(node);
        staking.withdraw();
        if (jailed) ghostWithdrawWhileJailed = true;
        calls["withdraw"]++;
    }

    function warp(uint32 dt) external {
        vm.warp(block.timestamp + _bound(dt, 1 hours, 4 days));
        calls["warp"]++;
    }

    // ----- verifier actions ----------------------------------------------------------------

    /// @dev An extra verifier (key 0xEE0 + i) joins; it never signs, so it only dilutes the core
    /// set (4 x 20 ether vs at most 2 x 15 ether: the core keeps > 2/3).
    function registerExtraVerifier(uint8 i, uint96 stake) external {
        address v = vm.addr(0xEE0 + (i % 2));
        stake = uint96(_bound(stake, staking.minVerifierStake(), 15 ether));
        vm.deal(v, v.balance + stake);
        vm.prank(v);
        staking.registerVerifier{value: stake}();
        calls["registerVerifier"]++;
    }

    function activateExtraVerifier(uint8 i) external {
        address v = vm.addr(0xEE0 + (i % 2));
        (, uint64 activatesAt,,) = staking.verifiers(v);
        if (activatesAt > block.timestamp) vm.warp(activatesAt);
        staking.activateVerifier(v);
        calls["activateVerifier"]++;
    }

    function unbondExtraVerifier(uint8 i) external {
        vm.prank(vm.addr(0xEE0 + (i % 2)));
        staking.requestVerifierUnbond();
        calls["unbondVerifier"]++;
    }

    function withdrawExtraVerifier(uint8 i) external {
        address v = vm.addr(0xEE0 + (i % 2));
        (,, uint64 unlockAt,) = staking.verifiers(v);
        if (unlockAt > block.timestamp) vm.warp(unlockAt);
        vm.prank(v);
        staking.withdrawVerifier();
        calls["withdrawVerifier"]++;
    }

    // ----- slashing ------------------------------------------------------------------------

    function slashEquivocation(uint256 nodeSeed, uint256 reporterSeed, uint8 contextSeed) external {
        uint256 key = nodeKeys[nodeSeed % NODE_COUNT];
        address node = vm.addr(key);
        bytes32 context = keccak256(abi.encode("ctx", contextSeed % 8));
        Receipt memory a = _receipt(context, keccak256("out-a"));
        Receipt memory b = _receipt(context, keccak256(abi.encode("out-b", contextSeed)));
        bytes memory sa = _sign(key, staking.receiptDigest(a));
        bytes memory sb = _sign(key, staking.receiptDigest(b));
        bytes32 evidenceId = keccak256(abi.encode(Staking.SlashKind.Equivocation, node, MANIFEST, uint32(0), context));
        uint256 stakeBefore = staking.getNode(node).stake;
        address reporter = reporters[reporterSeed % REPORTER_COUNT];
        uint256 bond = staking.challengeBond();
        vm.deal(reporter, reporter.balance + bond);
        vm.prank(reporter);
        uint256 id = staking.slashEquivocation{value: bond}(a, sa, b, sb);
        _afterOpen(id, evidenceId, stakeBefore);
        calls["slashEquivocation"]++;
    }

    function slashVerdict(uint256 nodeSeed, uint256 reporterSeed, uint16 bps, uint8 evidenceSeed) external {
        address node = vm.addr(nodeKeys[nodeSeed % NODE_COUNT]);
        bytes32 evidence = keccak256(abi.encode("evidence", evidenceSeed % 16));
        Verdict memory v = Verdict({
            node: node,
            evidenceHash: evidence,
            slashBps: uint16(_bound(bps, 0, 10_000)),
            deadline: uint64(block.timestamp + 1 hours)
        });
        bytes[] memory sigs = _quorumSigs(staking.verdictDigest(v));
        bytes32 evidenceId = keccak256(abi.encode(Staking.SlashKind.Verdict, node, evidence));
        uint256 stakeBefore = staking.getNode(node).stake;
        address reporter = reporters[reporterSeed % REPORTER_COUNT];
        uint256 bond = staking.challengeBond();
        vm.deal(reporter, reporter.balance + bond);
        vm.prank(reporter);
        uint256 id = staking.slashWithVerdict{value: bond}(v, sigs);
        _afterOpen(id, evidenceId, stakeBefore);
        calls["slashVerdict"]++;
    }

    /// @dev Slashes any verifier (core or extra; active or unbonding, or reverting otherwise) with a
    /// fault signed by the active core verifiers other than the accused; the reporter is credited.
    function slashVerifier(uint8 accusedSeed, uint256 reporterSeed, uint16 bps, uint8 evidenceSeed, bool honeypot)
        external
    {
        address[] memory vs = verifierAccounts();
        address accused = vs[accusedSeed % vs.length];
        VerifierFault memory f = VerifierFault({
            verifier: accused,
            kind: honeypot ? 0 : 1,
            evidenceHash: keccak256(abi.encode("vfault", evidenceSeed % 16)),
            slashBps: uint16(_bound(bps, 0, staking.MAX_VERIFIER_SLASH_BPS())),
            deadline: uint64(block.timestamp + 1 hours)
        });
        bytes[] memory sigs = _quorumSigsExcept(staking.verifierFaultDigest(f), accused);
        bytes32 evidenceId = keccak256(abi.encode(uint8(2), accused, f.evidenceHash));
        (uint128 stakeBefore,,,) = staking.verifiers(accused);
        vm.prank(reporters[reporterSeed % REPORTER_COUNT]);
        uint256 amount = staking.slashVerifier(f, sigs);
        (uint128 stakeAfter,,,) = staking.verifiers(accused);
        // never above the cap (50%), and exactly what left the verifier's stake
        if (amount * 2 > stakeBefore || stakeBefore - stakeAfter != amount) ghostVerifierSlashWrong = true;
        if (_seenEvidence[evidenceId]) ghostEvidenceReused = true;
        _seenEvidence[evidenceId] = true;
        ++ghostVerifierSlashes;
        calls["slashVerifier"]++;
    }

    function veto(uint256 slashSeed) external {
        if (slashIds.length == 0) return;
        uint256 id = slashIds[slashSeed % slashIds.length];
        (,,,,,,, bytes32 evidenceId) = staking.slashes(id);
        staking.vetoSlash(id, _quorumSigs(staking.vetoDigest(id, evidenceId)));
        calls["veto"]++;
    }

    function finalize(uint256 slashSeed, bool waitOut) external {
        if (slashIds.length == 0) return;
        uint256 id = slashIds[slashSeed % slashIds.length];
        (, uint64 executableAt,,,,,,) = staking.slashes(id);
        if (waitOut && executableAt > block.timestamp) vm.warp(executableAt);
        staking.finalizeSlash(id);
        calls["finalize"]++;
    }

    function withdrawOwed(uint256 accountSeed) external {
        address[] memory accts = creditAccounts();
        vm.prank(accts[accountSeed % accts.length]);
        staking.withdrawOwed();
        calls["withdrawOwed"]++;
    }

    // ----- views for the invariants --------------------------------------------------------

    function nodeCount() external pure returns (uint256) {
        return NODE_COUNT;
    }

    function nodeAt(uint256 i) public view returns (address) {
        return vm.addr(nodeKeys[i]);
    }

    function slashCountGhost() external view returns (uint256) {
        return slashIds.length;
    }

    /// @dev Every address that can ever hold a credit in `owed`.
    function creditAccounts() public view returns (address[] memory accts) {
        accts = new address[](NODE_COUNT + REPORTER_COUNT + 1);
        for (uint256 i; i < NODE_COUNT; ++i) {
            accts[i] = vm.addr(nodeKeys[i]);
        }
        for (uint256 i; i < REPORTER_COUNT; ++i) {
            accts[NODE_COUNT + i] = reporters[i];
        }
        accts[NODE_COUNT + REPORTER_COUNT] = treasury;
    }

    /// @dev Every address that can ever hold verifier stake.
    function verifierAccounts() public view returns (address[] memory accts) {
        accts = new address[](verifierKeys.length + 2);
        for (uint256 i; i < verifierKeys.length; ++i) {
            accts[i] = vm.addr(verifierKeys[i]);
        }
        accts[verifierKeys.length] = vm.addr(0xEE0);
        accts[verifierKeys.length + 1] = vm.addr(0xEE1);
    }

    // ----- internals -----------------------------------------------------------------------

    function _afterOpen(uint256 id, bytes32 evidenceId, uint256 stakeBefore) internal {
        (,,,,,, uint128 amount,) = staking.slashes(id);
        if (amount > stakeBefore) ghostSlashExceededStake = true;
        if (_seenEvidence[evidenceId]) ghostEvidenceReused = true;
        _seenEvidence[evidenceId] = true;
        slashIds.push(id);
        ++ghostSlashesOpened;
    }

    function _node(uint256 seed) internal view returns (address) {
        return vm.addr(nodeKeys[seed % NODE_COUNT]);
    }

    function _receipt(bytes32 context, bytes32 output) internal view returns (Receipt memory) {
        return Receipt({
            manifestHash: MANIFEST,
            shardIndex: 0,
            sessionId: keccak256("s"),
            step: 1,
            startPos: 0,
            numTokens: 4,
            inputHash: keccak256("in"),
            contextHash: context,
            outputHash: output,
            requestNonce: keccak256(abi.encode(output)),
            timestampMs: uint64(block.timestamp * 1000)
        });
    }

    function _sign(uint256 key, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(r, s, v);
    }

    /// @dev Signatures of the active core verifiers, sorted by signer address.
    function _quorumSigs(bytes32 digest) internal view returns (bytes[] memory sigs) {
        return _quorumSigsExcept(digest, address(0));
    }

    /// @dev Signatures of the active core verifiers other than `excluded`, sorted by signer address
    /// (a core verifier slashed below the minimum has left the quorum and no longer signs).
    function _quorumSigsExcept(bytes32 digest, address excluded) internal view returns (bytes[] memory sigs) {
        uint256[] memory keys = new uint256[](verifierKeys.length);
        uint256 n;
        for (uint256 i; i < verifierKeys.length; ++i) {
            address v = vm.addr(verifierKeys[i]);
            (,,, Staking.VerifierStatus status) = staking.verifiers(v);
            if (v != excluded && status == Staking.VerifierStatus.Active) keys[n++] = verifierKeys[i];
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
            sigs[i] = _sign(keys[i], digest);
        }
    }

    function _bound(uint256 x, uint256 min, uint256 max) internal pure returns (uint256) {
        return min + (x % (max - min + 1));
    }
}
