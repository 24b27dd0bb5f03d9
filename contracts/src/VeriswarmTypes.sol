// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @notice An inference receipt, signed by a node as EIP-712 typed data.
/// @dev Field names, types and order are fixed by the Python side (`veriswarm`); do not reorder.
/// `contextHash` is a running hash over every input of the session up to and including this
/// step, so two receipts with the same (manifestHash, shardIndex, contextHash) must carry the
/// same `outputHash` if the node is honest.
struct Receipt {
    bytes32 manifestHash;
    uint32 shardIndex;
    bytes32 sessionId;
    uint32 step;
    uint32 startPos;
    uint32 numTokens;
    bytes32 inputHash;
    bytes32 contextHash;
    bytes32 outputHash;
    bytes32 requestNonce;
    uint64 timestampMs;
}

/// @notice A fault verdict against `node`, signed (EIP-712) by a stake-weighted 2/3 quorum of verifiers.
/// @param node The node (receipt-signing address) found at fault.
/// @param evidenceHash Hash of the off-chain evidence; a (node, evidenceHash) pair can be used once.
/// @param slashBps Share of the node's current stake to slash, in basis points (<= 10_000).
/// @param deadline Unix time (seconds) after which the verdict can no longer be submitted.
struct Verdict {
    address node;
    bytes32 evidenceHash;
    uint16 slashBps;
    uint64 deadline;
}

/// @notice A verifier's fault, signed (EIP-712) by a stake-weighted 2/3 quorum of the *other* active
/// verifiers: the accused's own stake is taken out of the quorum denominator and its signature is refused.
/// @param verifier The verifier found at fault.
/// @param kind What it did: 0 = approved a planted-fault honeypot, 1 = signed a vote against a decided
/// quorum outcome (see {Staking-VerifierFaultKind}).
/// @param evidenceHash Hash of the off-chain evidence (e.g. the digest of the accused's signed vote);
/// a (verifier, evidenceHash) pair can be used once, whatever the kind or slashBps.
/// @param slashBps Share of the verifier's current stake to slash, in basis points
/// (<= Staking.MAX_VERIFIER_SLASH_BPS).
/// @param deadline Unix time (seconds) after which the fault can no longer be submitted.
struct VerifierFault {
    address verifier;
    uint8 kind;
    bytes32 evidenceHash;
    uint16 slashBps;
    uint64 deadline;
}

/// @title VeriswarmHashes
/// @notice EIP-712 type hashes and struct hashes shared by the veriswarm contracts and tests.
library VeriswarmHashes {
    /// @dev keccak256 of the Receipt type string, exactly as the Python side encodes it.
    bytes32 internal constant RECEIPT_TYPEHASH = keccak256(
        "Receipt(bytes32 manifestHash,uint32 shardIndex,bytes32 sessionId,uint32 step,uint32 startPos,"
        "uint32 numTokens,bytes32 inputHash,bytes32 contextHash,bytes32 outputHash,bytes32 requestNonce,"
        "uint64 timestampMs)"
    );

    /// @dev keccak256 of the Verdict type string.
    bytes32 internal constant VERDICT_TYPEHASH =
        keccak256("Verdict(address node,bytes32 evidenceHash,uint16 slashBps,uint64 deadline)");

    /// @dev keccak256 of the VerifierFault type string (quorum of the other verifiers slashes a verifier).
    bytes32 internal constant VERIFIER_FAULT_TYPEHASH =
        keccak256("VerifierFault(address verifier,uint8 kind,bytes32 evidenceHash,uint16 slashBps,uint64 deadline)");

    /// @dev keccak256 of the Veto type string (verifier quorum cancels a pending slash).
    bytes32 internal constant VETO_TYPEHASH = keccak256("Veto(uint256 slashId,bytes32 evidenceId)");

    /// @dev keccak256 of the Settlement type string (verifier quorum posts an epoch's reward root).
    bytes32 internal constant SETTLEMENT_TYPEHASH = keccak256("Settlement(uint64 epoch,bytes32 root,uint256 total)");

    /// @notice EIP-712 struct hash of a receipt.
    /// @dev All members are static, so `abi.encode` of the 12 words equals the concatenation of two
    /// shorter encodings; splitting keeps the legacy code generator within its stack limit.
    function hashReceipt(Receipt calldata r) internal pure returns (bytes32) {
        return keccak256(
            bytes.concat(
                abi.encode(RECEIPT_TYPEHASH, r.manifestHash, r.shardIndex, r.sessionId, r.step, r.startPos),
                abi.encode(r.numTokens, r.inputHash, r.contextHash, r.outputHash, r.requestNonce, r.timestampMs)
            )
        );
    }

    /// @notice EIP-712 struct hash of a verdict.
    function hashVerdict(Verdict calldata v) internal pure returns (bytes32) {
        return keccak256(abi.encode(VERDICT_TYPEHASH, v.node, v.evidenceHash, v.slashBps, v.deadline));
    }

    /// @notice EIP-712 struct hash of a verifier fault.
    function hashVerifierFault(VerifierFault calldata f) internal pure returns (bytes32) {
        return
            keccak256(abi.encode(VERIFIER_FAULT_TYPEHASH, f.verifier, f.kind, f.evidenceHash, f.slashBps, f.deadline));
    }

    /// @notice EIP-712 struct hash of a veto.
    function hashVeto(uint256 slashId, bytes32 evidenceId) internal pure returns (bytes32) {
        return keccak256(abi.encode(VETO_TYPEHASH, slashId, evidenceId));
    }

    /// @notice EIP-712 struct hash of an epoch settlement.
    function hashSettlement(uint64 epoch, bytes32 root, uint256 total) internal pure returns (bytes32) {
        return keccak256(abi.encode(SETTLEMENT_TYPEHASH, epoch, root, total));
    }
}
