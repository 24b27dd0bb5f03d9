// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Fixtures} from "../utils/Fixtures.sol";
import {Staking} from "../../src/Staking.sol";
import {StakingHandler} from "./StakingHandler.sol";

/// @notice Invariants of {Staking} under random action sequences driven by {StakingHandler}.
contract StakingInvariantTest is Fixtures {
    StakingHandler internal handler;

    function setUp() public {
        deployStaking();
        setUpVerifiers(4, 20 ether);
        handler = new StakingHandler(staking, verifierKeys);
        handler.bootstrap();
        targetContract(address(handler));
        FuzzSelector memory sel = FuzzSelector({addr: address(handler), selectors: new bytes4[](16)});
        sel.selectors[0] = StakingHandler.register.selector;
        sel.selectors[1] = StakingHandler.addStake.selector;
        sel.selectors[2] = StakingHandler.updateShard.selector;
        sel.selectors[3] = StakingHandler.requestUnbond.selector;
        sel.selectors[4] = StakingHandler.withdraw.selector;
        sel.selectors[5] = StakingHandler.warp.selector;
        sel.selectors[6] = StakingHandler.registerExtraVerifier.selector;
        sel.selectors[7] = StakingHandler.activateExtraVerifier.selector;
        sel.selectors[8] = StakingHandler.unbondExtraVerifier.selector;
        sel.selectors[9] = StakingHandler.withdrawExtraVerifier.selector;
        sel.selectors[10] = StakingHandler.slashEquivocation.selector;
        sel.selectors[11] = StakingHandler.slashVerdict.selector;
        sel.selectors[12] = StakingHandler.veto.selector;
        sel.selectors[13] = StakingHandler.finalize.selector;
        sel.selectors[14] = StakingHandler.withdrawOwed.selector;
        sel.selectors[15] = StakingHandler.slashVerifier.selector;
        targetSelector(sel); // everything except bootstrap()
    }

    /// @dev Solvency: every wei held is owed to exactly one bucket.
    /// balance == Σ node stake (active + unbonding) + Σ verifier stake (active, pending, unbonding;
    ///            net of verifier slashes) + Σ pending slash escrow (amount + bond) + Σ pull-payment
    ///            credits (incl. the reporter/treasury shares of verifier slashes).
    function invariant_balanceEqualsLiabilities() public view {
        uint256 sum;
        for (uint256 i; i < handler.nodeCount(); ++i) {
            sum += staking.getNode(handler.nodeAt(i)).stake;
        }
        address[] memory vs = handler.verifierAccounts();
        for (uint256 i; i < vs.length; ++i) {
            (uint128 stake,,,) = staking.verifiers(vs[i]);
            sum += stake;
        }
        uint256 count = staking.slashCount();
        for (uint256 id = 1; id <= count; ++id) {
            (,,, Staking.SlashStatus status,, uint96 bond, uint128 amount,) = staking.slashes(id);
            if (status == Staking.SlashStatus.Pending) sum += uint256(amount) + bond;
        }
        address[] memory accts = handler.creditAccounts();
        for (uint256 i; i < accts.length; ++i) {
            sum += staking.owed(accts[i]);
        }
        assertEq(address(staking).balance, sum, "balance != liabilities");
    }

    /// @dev The active-verifier total equals the sum of the active verifiers' stake.
    function invariant_verifierTotal() public view {
        address[] memory vs = handler.verifierAccounts();
        uint256 sum;
        uint256 n;
        for (uint256 i; i < vs.length; ++i) {
            (uint128 stake,,, Staking.VerifierStatus st) = staking.verifiers(vs[i]);
            if (st == Staking.VerifierStatus.Active) {
                sum += stake;
                ++n;
            }
        }
        assertEq(staking.totalVerifierStake(), sum, "totalVerifierStake");
        assertEq(staking.activeVerifierCount(), n, "activeVerifierCount");
    }

    /// @dev A slash never exceeds the stake it was taken from (a verifier slash never exceeds the 50%
    /// cap and is exactly what left the verifier's stake); evidence is never used twice; nobody
    /// withdraws while jailed.
    function invariant_slashSafety() public view {
        assertFalse(handler.ghostSlashExceededStake(), "slash exceeded stake");
        assertFalse(handler.ghostEvidenceReused(), "evidence reused");
        assertFalse(handler.ghostVerifierSlashWrong(), "verifier slash above cap or mis-accounted");
        assertFalse(handler.ghostWithdrawWhileJailed(), "withdrew while jailed");
        assertEq(staking.slashCount(), handler.ghostSlashesOpened(), "slash count");
    }

    /// @dev Each node's pending-slash counter matches the pending slashes recorded against it,
    /// and a node with a pending slash is never listed as active.
    function invariant_pendingSlashCounters() public view {
        uint256 count = staking.slashCount();
        for (uint256 i; i < handler.nodeCount(); ++i) {
            address node = handler.nodeAt(i);
            uint256 pending;
            for (uint256 id = 1; id <= count; ++id) {
                (address n,,, Staking.SlashStatus status,,,,) = staking.slashes(id);
                if (n == node && status == Staking.SlashStatus.Pending) ++pending;
            }
            Staking.Node memory rec = staking.getNode(node);
            assertEq(uint256(rec.pendingSlashes), pending, "pendingSlashes");
            if (pending > 0) assertFalse(staking.isActive(node), "jailed node listed");
        }
    }

    /// @dev The per-shard lists contain exactly the registered nodes, at their recorded positions.
    function invariant_listsConsistent() public view {
        uint256 listed;
        for (uint32 shard; shard < 3; ++shard) {
            address[] memory l = staking.registeredNodes(MANIFEST, shard);
            listed += l.length;
            for (uint256 j; j < l.length; ++j) {
                Staking.Node memory rec = staking.getNode(l[j]);
                assertEq(uint256(rec.listPosition), j + 1, "listPosition");
                assertEq(uint256(rec.shardIndex), shard, "shard");
                assertTrue(rec.status != Staking.NodeStatus.None, "unregistered node listed");
            }
        }
        uint256 registered;
        for (uint256 i; i < handler.nodeCount(); ++i) {
            if (staking.getNode(handler.nodeAt(i)).status != Staking.NodeStatus.None) ++registered;
        }
        assertEq(listed, registered, "listed != registered");
    }
}
