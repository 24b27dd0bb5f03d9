// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {IVerifierQuorum} from "./interfaces/IVerifierQuorum.sol";
import {VeriswarmHashes} from "./VeriswarmTypes.sol";

/// @title Rewards
/// @notice Per-epoch reward distribution: one settlement transaction per epoch posts the Merkle
/// root of (account, amount) allocations, signed off by a 2/3 stake-weighted quorum of the
/// verifiers registered in {Staking}; each node then claims its own allocation with a proof.
/// @dev Leaves follow OpenZeppelin's StandardMerkleTree for ["address", "uint256"]:
/// `leaf = keccak256(bytes.concat(keccak256(abi.encode(account, amount))))`, internal nodes hash
/// the sorted pair. The pool is native ETH funded by anyone; `reserved` is the part already
/// allocated to settled epochs and not yet claimed, so `address(this).balance >= reserved`.
contract Rewards is EIP712, ReentrancyGuard {
    /// @notice A settled epoch.
    /// @param root Merkle root of the (account, amount) allocations.
    /// @param total Sum of all allocations in the tree (reserved from the pool at settlement).
    /// @param claimed Sum claimed so far (never exceeds `total`).
    struct Epoch {
        bytes32 root;
        uint128 total;
        uint128 claimed;
    }

    /// @notice The verifier quorum (the {Staking} contract).
    IVerifierQuorum public immutable quorum;

    /// @notice Settled epochs by number (epochs start at 1).
    mapping(uint64 epoch => Epoch) public epochs;
    /// @notice Whether `account` has claimed its allocation of `epoch`.
    mapping(uint64 epoch => mapping(address account => bool)) public claimed;
    /// @notice Highest settled epoch; settlements must be strictly increasing.
    uint64 public lastSettledEpoch;
    /// @notice Allocated but not yet claimed, across all settled epochs.
    uint256 public reserved;

    /// @notice `epoch` is not above the last settled epoch.
    error EpochNotIncreasing(uint64 epoch, uint64 lastSettledEpoch);
    /// @notice `epoch` was never settled.
    error EpochNotSettled(uint64 epoch);
    /// @notice A settlement root of zero.
    error EmptyRoot();
    /// @notice The pool cannot cover the settlement total.
    error InsufficientPool(uint256 requested, uint256 available);
    /// @notice `account` already claimed `epoch`.
    error AlreadyClaimed(uint64 epoch, address account);
    /// @notice The proof does not show (account, amount) in the epoch's tree.
    error InvalidProof(uint64 epoch, address account, uint256 amount);
    /// @notice The claim would exceed the epoch's settled total.
    error ExceedsEpochTotal(uint64 epoch, uint256 claimedAfter, uint256 total);
    /// @notice A zero amount.
    error ZeroAmount();
    /// @notice An amount does not fit 128 bits.
    error AmountTooLarge(uint256 amount);
    /// @notice Native transfer to `to` failed.
    error TransferFailed(address to, uint256 amount);

    /// @notice `from` added `amount` wei to the pool.
    event Funded(address indexed from, uint256 amount);
    /// @notice `epoch` was settled with `root` allocating `total` wei.
    event EpochSettled(uint64 indexed epoch, bytes32 root, uint256 total, uint256 signedStake);
    /// @notice `account` claimed `amount` wei of `epoch`.
    event Claimed(uint64 indexed epoch, address indexed account, uint256 amount);

    /// @notice Deploys the pool; EIP-712 domain is ("veriswarm", "1", chainid, address(this)).
    /// @param quorum_ The verifier quorum (the {Staking} contract).
    constructor(IVerifierQuorum quorum_) EIP712("veriswarm", "1") {
        quorum = quorum_;
    }

    /// @notice Adds `msg.value` to the reward pool.
    function fund() external payable {
        _fund();
    }

    /// @notice Plain transfers fund the pool too.
    receive() external payable {
        _fund();
    }

    /// @notice Posts the allocation root of `epoch` (anyone may submit the quorum's signatures).
    /// @param epoch Epoch number, strictly above {lastSettledEpoch} (gaps allowed).
    /// @param root Merkle root of the (account, amount) allocations.
    /// @param total Sum of the allocations; must be covered by the unreserved pool.
    /// @param signatures Verifier signatures over {settlementDigest}, sorted by signer address.
    function settle(uint64 epoch, bytes32 root, uint256 total, bytes[] calldata signatures) external {
        if (epoch <= lastSettledEpoch) revert EpochNotIncreasing(epoch, lastSettledEpoch);
        if (root == bytes32(0)) revert EmptyRoot();
        if (total > type(uint128).max) revert AmountTooLarge(total);
        uint256 available = address(this).balance - reserved;
        if (total > available) revert InsufficientPool(total, available);
        uint256 signedStake = quorum.checkQuorum(settlementDigest(epoch, root, total), signatures);
        lastSettledEpoch = epoch;
        reserved += total;
        // casting to 'uint128' is safe because total <= type(uint128).max was checked above
        // forge-lint: disable-next-line(unsafe-typecast)
        epochs[epoch] = Epoch({root: root, total: uint128(total), claimed: 0});
        emit EpochSettled(epoch, root, total, signedStake);
    }

    /// @notice Claims the caller's allocation of `epoch`, paid to the caller.
    /// @param epoch A settled epoch.
    /// @param amount The allocated amount (as in the leaf).
    /// @param proof Merkle proof of the leaf (sorted-pair hashing).
    function claim(uint64 epoch, uint256 amount, bytes32[] calldata proof) external nonReentrant {
        Epoch storage e = epochs[epoch];
        bytes32 root = e.root;
        if (root == bytes32(0)) revert EpochNotSettled(epoch);
        if (claimed[epoch][msg.sender]) revert AlreadyClaimed(epoch, msg.sender);
        if (amount == 0) revert ZeroAmount();
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(msg.sender, amount))));
        if (!MerkleProof.verifyCalldata(proof, root, leaf)) revert InvalidProof(epoch, msg.sender, amount);
        uint256 claimedAfter = uint256(e.claimed) + amount;
        if (claimedAfter > e.total) revert ExceedsEpochTotal(epoch, claimedAfter, e.total);
        // Effects before the interaction (CEI): the claim is marked before ETH leaves.
        claimed[epoch][msg.sender] = true;
        // casting to 'uint128' is safe because claimedAfter <= e.total, a uint128
        // forge-lint: disable-next-line(unsafe-typecast)
        e.claimed = uint128(claimedAfter);
        reserved -= amount;
        emit Claimed(epoch, msg.sender, amount);
        (bool ok,) = payable(msg.sender).call{value: amount}("");
        if (!ok) revert TransferFailed(msg.sender, amount);
    }

    /// @notice Pool balance not reserved for settled epochs (what the next settlement may allocate).
    function availablePool() external view returns (uint256) {
        return address(this).balance - reserved;
    }

    /// @notice EIP-712 domain separator of this contract.
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @notice EIP-712 digest verifiers sign to settle `epoch` with `root` and `total`.
    function settlementDigest(uint64 epoch, bytes32 root, uint256 total) public view returns (bytes32) {
        return _hashTypedDataV4(VeriswarmHashes.hashSettlement(epoch, root, total));
    }

    /// @notice Merkle leaf for (account, amount), as the off-chain tree must build it.
    function leafHash(address account, uint256 amount) external pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(account, amount))));
    }

    function _fund() internal {
        if (msg.value == 0) revert ZeroAmount();
        emit Funded(msg.sender, msg.value);
    }
}
