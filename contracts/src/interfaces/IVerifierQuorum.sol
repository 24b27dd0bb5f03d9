// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title IVerifierQuorum
/// @notice Stake-weighted verifier quorum check, implemented by {Staking} and used by {Rewards}.
interface IVerifierQuorum {
    /// @notice Total stake of active verifiers (the quorum denominator).
    function totalVerifierStake() external view returns (uint256);

    /// @notice Reverts unless `signatures` (65-byte r||s||v, signers strictly ascending by address)
    /// come from active verifiers holding at least 2/3 of `totalVerifierStake()`.
    /// @param digest The EIP-712 digest that was signed (the caller's own domain).
    /// @param signatures One signature per verifier, sorted by recovered signer address.
    /// @return signedStake The summed stake of the signers.
    function checkQuorum(bytes32 digest, bytes[] calldata signatures) external view returns (uint256 signedStake);
}
