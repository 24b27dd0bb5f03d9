// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {IVerifierQuorum} from "./interfaces/IVerifierQuorum.sol";
import {Receipt, Verdict, VerifierFault, VeriswarmHashes} from "./VeriswarmTypes.sol";

/// @title Staking
/// @notice Node registry, node and verifier stake (native ETH), the verifier quorum, and slashing
/// for the veriswarm inference network.
/// @dev Design note — why slashing lives here and not in a separate `Slashing.sol`:
/// every wei this contract holds is a liability to exactly one bucket (a node's stake, a
/// verifier's stake, a pending slash escrow, or a pull-payment credit). Keeping slashing in the
/// same contract means a slash is an internal move between buckets of one ledger: no cross-contract
/// ETH transfer, no privileged "slasher" role on the registry, no re-entrancy surface between two
/// contracts, and the accounting invariant `balance == Σ liabilities` is checked on a single
/// contract. It also makes this contract the EIP-712 `verifyingContract` for receipts, verdicts,
/// verifier faults and vetoes.
///
/// Node state machine (see README): None → Active (register) → Unbonding (requestUnbond) →
/// None (withdraw, record deleted). "Jailed" is orthogonal: a node is jailed while it has a
/// pending slash or until `jailedUntil`; a jailed node is not listed and cannot withdraw.
/// Stake stays slashable while unbonding because `unbondingDelay >= challengeWindow` and a
/// pending slash blocks withdrawal.
contract Staking is EIP712, ReentrancyGuard, IVerifierQuorum {
    // ---------------------------------------------------------------------------------------
    // Types
    // ---------------------------------------------------------------------------------------

    /// @notice Lifecycle of a node record.
    enum NodeStatus {
        None,
        Active,
        Unbonding
    }

    /// @notice Lifecycle of a verifier record.
    enum VerifierStatus {
        None,
        Pending,
        Active,
        Unbonding
    }

    /// @notice What kind of evidence opened a slash.
    enum SlashKind {
        Equivocation,
        Verdict
    }

    /// @notice What a slashed verifier did (the `kind` of a {VerifierFault}).
    enum VerifierFaultKind {
        HoneypotApproval, // approved a known-answer session with a planted fault
        VoteAgainstOutcome // signed a vote against an outcome the quorum decided
    }

    /// @notice Lifecycle of a slash.
    enum SlashStatus {
        None,
        Pending,
        Executed,
        Vetoed
    }

    /// @notice Constructor parameters (all immutable afterwards).
    /// @param minStake Minimum node stake, in wei, to register and to be listed as active.
    /// @param minVerifierStake Minimum verifier stake, in wei.
    /// @param challengeBond Exact bond (wei) a reporter posts with a slash; lost if the slash is vetoed.
    /// @param challengeWindow Time (s) during which evidence about a node's work may be brought.
    /// @param unbondingDelay Time (s) between `requestUnbond` and `withdraw`; must be >= challengeWindow.
    /// @param vetoWindow Time (s) a slash stays pending (vetoable by the quorum) before funds move.
    /// @param jailDuration Time (s) a node stays jailed after a slash is executed.
    /// @param verifierActivationDelay Time (s) before a newly registered verifier can be activated.
    /// @param reporterShareBps Reporter's share of an executed slash, in bps; <= MAX_REPORTER_SHARE_BPS.
    /// @param equivocationSlashBps Share of the node's stake slashed for an equivocation, in bps.
    /// @param treasury Receives (pull) the slashed funds that do not go to the reporter.
    struct Params {
        uint256 minStake;
        uint256 minVerifierStake;
        uint256 challengeBond;
        uint64 challengeWindow;
        uint64 unbondingDelay;
        uint64 vetoWindow;
        uint64 jailDuration;
        uint64 verifierActivationDelay;
        uint16 reporterShareBps;
        uint16 equivocationSlashBps;
        address treasury;
    }

    /// @notice A registered node. `stake` excludes amounts escrowed by pending slashes.
    struct Node {
        uint128 stake;
        uint64 unlockAt;
        uint64 jailedUntil;
        NodeStatus status;
        uint32 shardIndex;
        uint32 pendingSlashes;
        uint32 listPosition; // 1-based position in the (manifestHash, shardIndex) list
        bytes32 manifestHash;
        string endpoint;
    }

    /// @notice A verifier. Only `Active` verifiers count in the quorum. `stake` is fixed at registration
    /// and only ever lowered, by {slashVerifier}.
    struct Verifier {
        uint128 stake;
        uint64 activatesAt;
        uint64 unlockAt;
        VerifierStatus status;
    }

    /// @notice A slash; `amount` (taken from the node's stake) and `bond` are escrowed while pending.
    struct Slash {
        address node;
        uint64 executableAt;
        SlashKind kind;
        SlashStatus status;
        address reporter;
        uint96 bond;
        uint128 amount;
        bytes32 evidenceId;
    }

    // ---------------------------------------------------------------------------------------
    // Constants and immutables
    // ---------------------------------------------------------------------------------------

    /// @notice Basis-point denominator.
    uint256 public constant BPS = 10_000;
    /// @notice Hard cap on the reporter's share of a slash (10%).
    uint16 public constant MAX_REPORTER_SHARE_BPS = 1_000;
    /// @notice Maximum endpoint length in bytes.
    uint256 public constant MAX_ENDPOINT_LENGTH = 256;
    /// @notice Hard cap on the share of a verifier's stake one {slashVerifier} can take (50%).
    uint16 public constant MAX_VERIFIER_SLASH_BPS = 5_000;

    /// @notice See {Params}.
    uint256 public immutable minStake;
    /// @notice See {Params}.
    uint256 public immutable minVerifierStake;
    /// @notice See {Params}.
    uint256 public immutable challengeBond;
    /// @notice See {Params}.
    uint64 public immutable challengeWindow;
    /// @notice See {Params}.
    uint64 public immutable unbondingDelay;
    /// @notice See {Params}.
    uint64 public immutable vetoWindow;
    /// @notice See {Params}.
    uint64 public immutable jailDuration;
    /// @notice See {Params}.
    uint64 public immutable verifierActivationDelay;
    /// @notice See {Params}.
    uint16 public immutable reporterShareBps;
    /// @notice See {Params}.
    uint16 public immutable equivocationSlashBps;
    /// @notice See {Params}.
    address public immutable treasury;

    // ---------------------------------------------------------------------------------------
    // Storage
    // ---------------------------------------------------------------------------------------

    mapping(address node => Node) private _nodes;
    mapping(bytes32 listKey => address[]) private _shardNodes;

    /// @notice Verifier records by address.
    mapping(address verifier => Verifier) public verifiers;
    /// @notice Sum of the stake of `Active` verifiers (quorum denominator).
    uint256 public totalVerifierStake;
    /// @notice Number of `Active` verifiers.
    uint256 public activeVerifierCount;

    /// @notice Slashes by id (ids start at 1).
    mapping(uint256 slashId => Slash) public slashes;
    /// @notice Number of slashes opened so far (= id of the latest).
    uint256 public slashCount;
    /// @notice Evidence ids already used to open a slash.
    mapping(bytes32 evidenceId => bool) public evidenceUsed;
    /// @notice Pull-payment credits (reporter rewards, returned/forfeited bonds, treasury share).
    mapping(address account => uint256) public owed;

    // ---------------------------------------------------------------------------------------
    // Errors
    // ---------------------------------------------------------------------------------------

    /// @notice A constructor parameter is out of range.
    error InvalidParameter(string name);
    /// @notice Stake sent is below the minimum.
    error InsufficientStake(uint256 sent, uint256 minimum);
    /// @notice `node` already has a record.
    error AlreadyRegistered(address node);
    /// @notice `node` has no record.
    error NotRegistered(address node);
    /// @notice Endpoint is empty or longer than `max` bytes.
    error InvalidEndpointLength(uint256 length, uint256 max);
    /// @notice The node is not in the `Active` status.
    error NodeNotActive(address node, NodeStatus status);
    /// @notice The node is not unbonding.
    error NodeNotUnbonding(address node, NodeStatus status);
    /// @notice The unbonding delay has not elapsed yet.
    error StillLocked(uint64 unlockAt, uint256 timestamp);
    /// @notice The node is jailed (pending slash or jail period running).
    error NodeJailed(address node, uint64 jailedUntil, uint32 pendingSlashes);
    /// @notice A zero amount was sent or requested.
    error ZeroAmount();
    /// @notice An amount does not fit the 128-bit stake fields.
    error AmountTooLarge(uint256 amount);
    /// @notice Native transfer to `to` failed.
    error TransferFailed(address to, uint256 amount);
    /// @notice `verifier` already has a record.
    error VerifierAlreadyRegistered(address verifier);
    /// @notice The verifier is not in the expected status.
    error UnexpectedVerifierStatus(address verifier, VerifierStatus status);
    /// @notice The verifier activation delay has not elapsed.
    error ActivationNotReady(uint64 activatesAt, uint256 timestamp);
    /// @notice There is no active verifier stake, so no quorum can exist.
    error NoVerifiers();
    /// @notice Quorum signers must be strictly ascending by address (no duplicates).
    error SignersNotSorted(address previous, address next);
    /// @notice A quorum signature was not made by an active verifier.
    error NotActiveVerifier(address signer);
    /// @notice The signers hold less than 2/3 of the active verifier stake.
    error QuorumNotReached(uint256 signedStake, uint256 totalStake);
    /// @notice The bond sent is not exactly `challengeBond`.
    error WrongBond(uint256 sent, uint256 required);
    /// @notice The two receipts do not conflict (same manifest, shard, context and different output).
    error NotConflicting();
    /// @notice The two receipts were signed by different keys.
    error SignerMismatch(address signerA, address signerB);
    /// @notice The evidence was already used to open a slash.
    error EvidenceAlreadyUsed(bytes32 evidenceId);
    /// @notice The verdict's deadline has passed.
    error VerdictExpired(uint64 deadline, uint256 timestamp);
    /// @notice slashBps above 10_000.
    error InvalidSlashBps(uint256 slashBps);
    /// @notice The slash is not pending.
    error SlashNotPending(uint256 slashId, SlashStatus status);
    /// @notice A verifier slash above MAX_VERIFIER_SLASH_BPS.
    error VerifierSlashBpsTooHigh(uint256 slashBps, uint256 maxBps);
    /// @notice The fault kind is not a {VerifierFaultKind}.
    error InvalidFaultKind(uint8 kind);
    /// @notice The accused verifier signed its own fault (its stake must not count toward the quorum).
    error AccusedSigned(address verifier);
    /// @notice The veto window of the slash has closed.
    error VetoWindowClosed(uint256 slashId, uint64 executableAt);
    /// @notice The veto window of the slash is still open.
    error VetoWindowOpen(uint256 slashId, uint64 executableAt);

    // ---------------------------------------------------------------------------------------
    // Events
    // ---------------------------------------------------------------------------------------

    /// @notice A node registered with `stake` wei.
    event NodeRegistered(
        address indexed node, bytes32 indexed manifestHash, uint32 indexed shardIndex, string endpoint, uint256 stake
    );
    /// @notice A node changed its endpoint.
    event EndpointUpdated(address indexed node, string endpoint);
    /// @notice A node moved to another (manifestHash, shardIndex).
    event ShardUpdated(address indexed node, bytes32 indexed manifestHash, uint32 indexed shardIndex);
    /// @notice A node added stake.
    event StakeAdded(address indexed node, uint256 amount, uint256 newStake);
    /// @notice A node started unbonding; it can withdraw from `unlockAt` if not jailed.
    event UnbondRequested(address indexed node, uint64 unlockAt);
    /// @notice A node withdrew its remaining stake; its record is deleted.
    event Withdrawn(address indexed node, uint256 amount);
    /// @notice A verifier registered; it can be activated from `activatesAt`.
    event VerifierRegistered(address indexed verifier, uint256 stake, uint64 activatesAt);
    /// @notice A verifier became active and counts in the quorum.
    event VerifierActivated(address indexed verifier, uint256 stake, uint256 totalVerifierStake);
    /// @notice A verifier left the quorum and started unbonding.
    event VerifierUnbondRequested(address indexed verifier, uint64 unlockAt, uint256 totalVerifierStake);
    /// @notice A verifier withdrew its stake; its record is deleted.
    event VerifierWithdrawn(address indexed verifier, uint256 amount);
    /// @notice A slash was opened: `amount` moved from the node's stake into escrow, node jailed.
    event SlashProposed(
        uint256 indexed slashId,
        address indexed node,
        SlashKind kind,
        bytes32 evidenceId,
        uint256 amount,
        address reporter,
        uint64 executableAt
    );
    /// @notice The quorum vetoed a pending slash: stake restored, reporter bond forfeited to the node.
    event SlashVetoed(uint256 indexed slashId, address indexed node, uint256 restored, uint256 bondForfeited);
    /// @notice A slash was executed after its veto window; the node is jailed until `jailedUntil`.
    event SlashExecuted(
        uint256 indexed slashId, address indexed node, uint256 amount, uint256 reporterReward, uint64 jailedUntil
    );
    /// @notice A verifier was slashed `amount` wei (executed at once): `reporterReward` credited to the
    /// reporter, the rest to the treasury. `remainingStake` is what it keeps; below `minVerifierStake`
    /// an active verifier also leaves the quorum (a {VerifierUnbondRequested} event follows).
    event VerifierSlashed(
        address indexed verifier,
        VerifierFaultKind indexed kind,
        bytes32 evidenceId,
        uint256 amount,
        address reporter,
        uint256 reporterReward,
        uint256 remainingStake
    );
    /// @notice `account` was credited `amount` wei (withdraw with {withdrawOwed}).
    event Credited(address indexed account, uint256 amount);
    /// @notice `account` withdrew its credits.
    event OwedWithdrawn(address indexed account, uint256 amount);

    // ---------------------------------------------------------------------------------------
    // Construction
    // ---------------------------------------------------------------------------------------

    /// @notice Deploys the contract; EIP-712 domain is ("veriswarm", "1", chainid, address(this)).
    /// @param p The parameters, see {Params}.
    constructor(Params memory p) EIP712("veriswarm", "1") {
        if (p.minStake == 0) revert InvalidParameter("minStake");
        if (p.minVerifierStake == 0) revert InvalidParameter("minVerifierStake");
        if (p.challengeBond > type(uint96).max) revert InvalidParameter("challengeBond");
        if (p.unbondingDelay < p.challengeWindow) revert InvalidParameter("unbondingDelay");
        if (p.reporterShareBps > MAX_REPORTER_SHARE_BPS) revert InvalidParameter("reporterShareBps");
        if (p.equivocationSlashBps > BPS) revert InvalidParameter("equivocationSlashBps");
        if (p.treasury == address(0)) revert InvalidParameter("treasury");
        minStake = p.minStake;
        minVerifierStake = p.minVerifierStake;
        challengeBond = p.challengeBond;
        challengeWindow = p.challengeWindow;
        unbondingDelay = p.unbondingDelay;
        vetoWindow = p.vetoWindow;
        jailDuration = p.jailDuration;
        verifierActivationDelay = p.verifierActivationDelay;
        reporterShareBps = p.reporterShareBps;
        equivocationSlashBps = p.equivocationSlashBps;
        treasury = p.treasury;
    }

    // ---------------------------------------------------------------------------------------
    // Nodes
    // ---------------------------------------------------------------------------------------

    /// @notice Registers `msg.sender` (the node's receipt-signing key) with `msg.value` stake.
    /// @param endpoint Public endpoint (1..MAX_ENDPOINT_LENGTH bytes).
    /// @param shardIndex Shard of the model this node serves.
    /// @param manifestHash Hash of the model manifest this node serves.
    function register(string calldata endpoint, uint32 shardIndex, bytes32 manifestHash) external payable {
        if (msg.value < minStake) revert InsufficientStake(msg.value, minStake);
        _checkEndpoint(endpoint);
        Node storage n = _nodes[msg.sender];
        if (n.status != NodeStatus.None) revert AlreadyRegistered(msg.sender);
        n.stake = _toUint128(msg.value);
        n.status = NodeStatus.Active;
        n.shardIndex = shardIndex;
        n.manifestHash = manifestHash;
        n.endpoint = endpoint;
        _listAdd(msg.sender, n);
        emit NodeRegistered(msg.sender, manifestHash, shardIndex, endpoint, msg.value);
    }

    /// @notice Changes the caller's endpoint.
    /// @param endpoint New endpoint (1..MAX_ENDPOINT_LENGTH bytes).
    function updateEndpoint(string calldata endpoint) external {
        _checkEndpoint(endpoint);
        Node storage n = _registered(msg.sender);
        n.endpoint = endpoint;
        emit EndpointUpdated(msg.sender, endpoint);
    }

    /// @notice Moves the caller to another (manifestHash, shardIndex).
    /// @param manifestHash New manifest hash.
    /// @param shardIndex New shard index.
    function updateShard(bytes32 manifestHash, uint32 shardIndex) external {
        Node storage n = _registered(msg.sender);
        _listRemove(n);
        n.manifestHash = manifestHash;
        n.shardIndex = shardIndex;
        _listAdd(msg.sender, n);
        emit ShardUpdated(msg.sender, manifestHash, shardIndex);
    }

    /// @notice Adds `msg.value` to the caller's stake (only while `Active`; allowed while jailed).
    function addStake() external payable {
        if (msg.value == 0) revert ZeroAmount();
        Node storage n = _registered(msg.sender);
        if (n.status != NodeStatus.Active) revert NodeNotActive(msg.sender, n.status);
        uint128 newStake = n.stake + _toUint128(msg.value);
        n.stake = newStake;
        emit StakeAdded(msg.sender, msg.value, newStake);
    }

    /// @notice Starts unbonding the caller's whole stake. The node stops being listed at once and
    /// stays slashable until it withdraws.
    function requestUnbond() external {
        Node storage n = _registered(msg.sender);
        if (n.status != NodeStatus.Active) revert NodeNotActive(msg.sender, n.status);
        uint64 unlockAt = uint64(block.timestamp) + unbondingDelay;
        n.status = NodeStatus.Unbonding;
        n.unlockAt = unlockAt;
        emit UnbondRequested(msg.sender, unlockAt);
    }

    /// @notice Withdraws the caller's remaining stake after the unbonding delay, if not jailed, and
    /// deletes its record (it may register again later).
    function withdraw() external nonReentrant {
        Node storage n = _nodes[msg.sender];
        if (n.status != NodeStatus.Unbonding) revert NodeNotUnbonding(msg.sender, n.status);
        if (block.timestamp < n.unlockAt) revert StillLocked(n.unlockAt, block.timestamp);
        if (n.pendingSlashes != 0 || block.timestamp < n.jailedUntil) {
            revert NodeJailed(msg.sender, n.jailedUntil, n.pendingSlashes);
        }
        uint256 amount = n.stake;
        // Effects before the interaction: the record is gone before ETH leaves (CEI).
        _listRemove(n);
        delete _nodes[msg.sender];
        emit Withdrawn(msg.sender, amount);
        _send(msg.sender, amount);
    }

    // ---------------------------------------------------------------------------------------
    // Verifiers
    // ---------------------------------------------------------------------------------------

    /// @notice Registers `msg.sender` as a verifier with `msg.value` stake (>= minVerifierStake).
    /// It counts in the quorum only after {activateVerifier}, at least `verifierActivationDelay` later.
    function registerVerifier() external payable {
        if (msg.value < minVerifierStake) revert InsufficientStake(msg.value, minVerifierStake);
        Verifier storage v = verifiers[msg.sender];
        if (v.status != VerifierStatus.None) revert VerifierAlreadyRegistered(msg.sender);
        uint64 activatesAt = uint64(block.timestamp) + verifierActivationDelay;
        v.stake = _toUint128(msg.value);
        v.activatesAt = activatesAt;
        v.status = VerifierStatus.Pending;
        emit VerifierRegistered(msg.sender, msg.value, activatesAt);
    }

    /// @notice Activates a pending verifier once its activation delay has passed (anyone may call).
    /// @param verifier The verifier to activate.
    function activateVerifier(address verifier) external {
        Verifier storage v = verifiers[verifier];
        if (v.status != VerifierStatus.Pending) revert UnexpectedVerifierStatus(verifier, v.status);
        if (block.timestamp < v.activatesAt) revert ActivationNotReady(v.activatesAt, block.timestamp);
        v.status = VerifierStatus.Active;
        uint256 total = totalVerifierStake + v.stake;
        totalVerifierStake = total;
        ++activeVerifierCount;
        emit VerifierActivated(verifier, v.stake, total);
    }

    /// @notice Leaves the verifier set (pending or active) and starts unbonding.
    function requestVerifierUnbond() external {
        Verifier storage v = verifiers[msg.sender];
        VerifierStatus status = v.status;
        if (status != VerifierStatus.Active && status != VerifierStatus.Pending) {
            revert UnexpectedVerifierStatus(msg.sender, status);
        }
        uint256 total = totalVerifierStake;
        if (status == VerifierStatus.Active) {
            total -= v.stake;
            totalVerifierStake = total;
            --activeVerifierCount;
        }
        uint64 unlockAt = uint64(block.timestamp) + unbondingDelay;
        v.status = VerifierStatus.Unbonding;
        v.unlockAt = unlockAt;
        emit VerifierUnbondRequested(msg.sender, unlockAt, total);
    }

    /// @notice Withdraws the caller's verifier stake after the unbonding delay and deletes the record.
    function withdrawVerifier() external nonReentrant {
        Verifier storage v = verifiers[msg.sender];
        if (v.status != VerifierStatus.Unbonding) revert UnexpectedVerifierStatus(msg.sender, v.status);
        if (block.timestamp < v.unlockAt) revert StillLocked(v.unlockAt, block.timestamp);
        uint256 amount = v.stake;
        // Effects before the interaction (CEI).
        delete verifiers[msg.sender];
        emit VerifierWithdrawn(msg.sender, amount);
        _send(msg.sender, amount);
    }

    /// @inheritdoc IVerifierQuorum
    function checkQuorum(bytes32 digest, bytes[] calldata signatures) public view returns (uint256 signedStake) {
        return _checkQuorum(digest, signatures, address(0), totalVerifierStake);
    }

    // ---------------------------------------------------------------------------------------
    // Slashing
    // ---------------------------------------------------------------------------------------

    /// @notice Opens a slash against the node that signed two conflicting receipts (same
    /// manifestHash, shardIndex and contextHash, different outputHash). Anyone may call, sending
    /// exactly `challengeBond`. One slash per (node, manifestHash, shardIndex, contextHash).
    /// @param a First receipt.
    /// @param sigA 65-byte r||s||v EIP-712 signature of `a`.
    /// @param b Second receipt.
    /// @param sigB 65-byte r||s||v EIP-712 signature of `b`.
    /// @return slashId Id of the pending slash.
    function slashEquivocation(Receipt calldata a, bytes calldata sigA, Receipt calldata b, bytes calldata sigB)
        external
        payable
        returns (uint256 slashId)
    {
        if (
            a.manifestHash != b.manifestHash || a.shardIndex != b.shardIndex || a.contextHash != b.contextHash
                || a.outputHash == b.outputHash
        ) revert NotConflicting();
        address signerA = ECDSA.recoverCalldata(receiptDigest(a), sigA);
        address signerB = ECDSA.recoverCalldata(receiptDigest(b), sigB);
        if (signerA != signerB) revert SignerMismatch(signerA, signerB);
        bytes32 evidenceId =
            keccak256(abi.encode(SlashKind.Equivocation, signerA, a.manifestHash, a.shardIndex, a.contextHash));
        slashId = _openSlash(signerA, SlashKind.Equivocation, evidenceId, equivocationSlashBps);
    }

    /// @notice Opens a slash from a fault verdict signed by a 2/3 stake-weighted verifier quorum.
    /// Anyone may submit, sending exactly `challengeBond`; the submitter is the reporter.
    /// @param v The verdict.
    /// @param signatures Verifier signatures over {verdictDigest}, sorted by signer address.
    /// @return slashId Id of the pending slash.
    function slashWithVerdict(Verdict calldata v, bytes[] calldata signatures)
        external
        payable
        returns (uint256 slashId)
    {
        if (block.timestamp > v.deadline) revert VerdictExpired(v.deadline, block.timestamp);
        if (v.slashBps > BPS) revert InvalidSlashBps(v.slashBps);
        checkQuorum(verdictDigest(v), signatures);
        bytes32 evidenceId = keccak256(abi.encode(SlashKind.Verdict, v.node, v.evidenceHash));
        slashId = _openSlash(v.node, SlashKind.Verdict, evidenceId, v.slashBps);
    }

    /// @notice Slashes a verifier's stake for a fault signed by a 2/3 stake-weighted quorum of the *other*
    /// active verifiers: the accused's stake is left out of the denominator and its own signature is
    /// refused. Executes at once (no veto window: the only body that could veto is the quorum that
    /// signed); the reporter (`msg.sender`, no bond) is credited `reporterShareBps` of the amount, the
    /// treasury the rest. Active and unbonding verifiers are slashable (stake stays slashable until
    /// {withdrawVerifier}); an active verifier left below `minVerifierStake` leaves the quorum and
    /// starts unbonding.
    /// @dev The fault itself rests on the quorum: the contract checks who signed it, not the
    /// off-chain evidence (the accused's signed vote or honeypot verdict) behind `evidenceHash`.
    /// @param f The fault (accused, kind, evidence hash, bps <= MAX_VERIFIER_SLASH_BPS, deadline).
    /// @param signatures Signatures of other active verifiers over {verifierFaultDigest}, sorted by signer.
    /// @return amount The wei taken from the verifier's stake.
    function slashVerifier(VerifierFault calldata f, bytes[] calldata signatures) external returns (uint256 amount) {
        if (block.timestamp > f.deadline) revert VerdictExpired(f.deadline, block.timestamp);
        if (f.slashBps > MAX_VERIFIER_SLASH_BPS) revert VerifierSlashBpsTooHigh(f.slashBps, MAX_VERIFIER_SLASH_BPS);
        if (f.kind > uint8(type(VerifierFaultKind).max)) revert InvalidFaultKind(f.kind);
        address accused = f.verifier;
        Verifier storage v = verifiers[accused];
        VerifierStatus status = v.status;
        if (status != VerifierStatus.Active && status != VerifierStatus.Unbonding) {
            revert UnexpectedVerifierStatus(accused, status);
        }
        // The accused's weight is not part of the quorum it is judged by (it is already out if unbonding).
        uint256 total = totalVerifierStake;
        uint256 others = status == VerifierStatus.Active ? total - v.stake : total;
        _checkQuorum(verifierFaultDigest(f), signatures, accused, others);
        bytes32 evidenceId = keccak256(abi.encode(uint8(2), accused, f.evidenceHash));
        if (evidenceUsed[evidenceId]) revert EvidenceAlreadyUsed(evidenceId);
        evidenceUsed[evidenceId] = true;
        // Effects only, no interaction: the slashed wei move from the verifier's stake into pull credits.
        // bps <= MAX_VERIFIER_SLASH_BPS < BPS, so amount < stake (and fits 'uint128').
        uint128 stake = v.stake;
        // forge-lint: disable-next-line(unsafe-typecast)
        uint128 cut = uint128(uint256(stake) * f.slashBps / BPS);
        uint128 remaining = stake - cut;
        v.stake = remaining;
        if (status == VerifierStatus.Active) {
            total -= cut;
            if (remaining < minVerifierStake) {
                // Below the minimum: out of the quorum, unbonding (still slashable until withdrawn).
                total -= remaining;
                --activeVerifierCount;
                uint64 unlockAt = uint64(block.timestamp) + unbondingDelay;
                v.status = VerifierStatus.Unbonding;
                v.unlockAt = unlockAt;
                emit VerifierUnbondRequested(accused, unlockAt, total);
            }
            totalVerifierStake = total;
        }
        amount = cut;
        uint256 reward = amount * reporterShareBps / BPS;
        emit VerifierSlashed(accused, VerifierFaultKind(f.kind), evidenceId, amount, msg.sender, reward, remaining);
        _credit(msg.sender, reward);
        _credit(treasury, amount - reward);
    }

    /// @notice Cancels a pending slash during its veto window (verifier quorum). The escrowed amount
    /// returns to the node's stake and the reporter's bond is forfeited to the node.
    /// @param slashId The slash to veto.
    /// @param signatures Verifier signatures over {vetoDigest}(slashId, evidenceId), sorted by signer.
    function vetoSlash(uint256 slashId, bytes[] calldata signatures) external {
        Slash storage s = _pendingSlash(slashId);
        if (block.timestamp >= s.executableAt) revert VetoWindowClosed(slashId, s.executableAt);
        checkQuorum(vetoDigest(slashId, s.evidenceId), signatures);
        s.status = SlashStatus.Vetoed;
        Node storage n = _nodes[s.node]; // exists: a node with a pending slash cannot withdraw
        n.stake += s.amount;
        --n.pendingSlashes;
        emit SlashVetoed(slashId, s.node, s.amount, s.bond);
        _credit(s.node, s.bond);
    }

    /// @notice Executes a pending slash once its veto window has passed (anyone may call): the
    /// reporter is credited its bond plus `reporterShareBps` of the amount, the treasury the rest,
    /// and the node is jailed for `jailDuration`.
    /// @param slashId The slash to execute.
    function finalizeSlash(uint256 slashId) external {
        Slash storage s = _pendingSlash(slashId);
        if (block.timestamp < s.executableAt) revert VetoWindowOpen(slashId, s.executableAt);
        s.status = SlashStatus.Executed;
        Node storage n = _nodes[s.node];
        --n.pendingSlashes;
        uint64 jailedUntil = uint64(block.timestamp) + jailDuration;
        if (jailedUntil > n.jailedUntil) n.jailedUntil = jailedUntil;
        uint256 amount = s.amount;
        uint256 reward = amount * reporterShareBps / BPS;
        emit SlashExecuted(slashId, s.node, amount, reward, n.jailedUntil);
        _credit(s.reporter, s.bond + reward);
        _credit(treasury, amount - reward);
    }

    /// @notice Withdraws the caller's credits (rewards, bonds, treasury share).
    function withdrawOwed() external nonReentrant {
        uint256 amount = owed[msg.sender];
        if (amount == 0) revert ZeroAmount();
        // Zero the credit before sending (CEI).
        owed[msg.sender] = 0;
        emit OwedWithdrawn(msg.sender, amount);
        _send(msg.sender, amount);
    }

    // ---------------------------------------------------------------------------------------
    // Views
    // ---------------------------------------------------------------------------------------

    /// @notice The full record of `node` (zeroed if unregistered).
    function getNode(address node) external view returns (Node memory) {
        return _nodes[node];
    }

    /// @notice True if `node` is registered, `Active`, not jailed, and holds at least `minStake`.
    function isActive(address node) public view returns (bool) {
        Node storage n = _nodes[node];
        return n.status == NodeStatus.Active && n.pendingSlashes == 0 && block.timestamp >= n.jailedUntil
            && n.stake >= minStake;
    }

    /// @notice True if `node` has a pending slash or its jail period is running.
    function isJailed(address node) external view returns (bool) {
        Node storage n = _nodes[node];
        return n.pendingSlashes != 0 || block.timestamp < n.jailedUntil;
    }

    /// @notice Active nodes (see {isActive}) serving `shardIndex` of `manifestHash`, with endpoints.
    /// @dev Unbounded loop over the registered nodes of that shard: meant for `eth_call`.
    function activeNodes(bytes32 manifestHash, uint32 shardIndex)
        external
        view
        returns (address[] memory nodes, string[] memory endpoints)
    {
        address[] storage all = _shardNodes[_listKey(manifestHash, shardIndex)];
        uint256 len = all.length;
        nodes = new address[](len);
        uint256 count;
        for (uint256 i; i < len; ++i) {
            address node = all[i];
            if (isActive(node)) nodes[count++] = node;
        }
        assembly ("memory-safe") {
            mstore(nodes, count) // shrink to the number of active nodes
        }
        endpoints = new string[](count);
        for (uint256 i; i < count; ++i) {
            endpoints[i] = _nodes[nodes[i]].endpoint;
        }
    }

    /// @notice All registered nodes (any status) of `shardIndex` of `manifestHash`.
    function registeredNodes(bytes32 manifestHash, uint32 shardIndex) external view returns (address[] memory) {
        return _shardNodes[_listKey(manifestHash, shardIndex)];
    }

    /// @notice EIP-712 domain separator of this contract.
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @notice EIP-712 digest a node signs for `r`.
    function receiptDigest(Receipt calldata r) public view returns (bytes32) {
        return _hashTypedDataV4(VeriswarmHashes.hashReceipt(r));
    }

    /// @notice EIP-712 digest verifiers sign for `v`.
    function verdictDigest(Verdict calldata v) public view returns (bytes32) {
        return _hashTypedDataV4(VeriswarmHashes.hashVerdict(v));
    }

    /// @notice EIP-712 digest the other verifiers sign to slash the verifier of `f`.
    function verifierFaultDigest(VerifierFault calldata f) public view returns (bytes32) {
        return _hashTypedDataV4(VeriswarmHashes.hashVerifierFault(f));
    }

    /// @notice EIP-712 digest verifiers sign to veto slash `slashId` (whose evidence id is `evidenceId`).
    function vetoDigest(uint256 slashId, bytes32 evidenceId) public view returns (bytes32) {
        return _hashTypedDataV4(VeriswarmHashes.hashVeto(slashId, evidenceId));
    }

    // ---------------------------------------------------------------------------------------
    // Internals
    // ---------------------------------------------------------------------------------------

    function _openSlash(address node, SlashKind kind, bytes32 evidenceId, uint256 bps)
        internal
        returns (uint256 slashId)
    {
        if (msg.value != challengeBond) revert WrongBond(msg.value, challengeBond);
        Node storage n = _nodes[node];
        if (n.status == NodeStatus.None) revert NotRegistered(node);
        if (evidenceUsed[evidenceId]) revert EvidenceAlreadyUsed(evidenceId);
        evidenceUsed[evidenceId] = true;
        // bps <= BPS, so amount <= stake: a slash never exceeds the stake it is taken from
        // (and casting to 'uint128' is safe for the same reason).
        // forge-lint: disable-next-line(unsafe-typecast)
        uint128 amount = uint128(uint256(n.stake) * bps / BPS);
        n.stake -= amount;
        ++n.pendingSlashes; // jails the node (unlisted, cannot withdraw) until resolved
        slashId = ++slashCount;
        uint64 executableAt = uint64(block.timestamp) + vetoWindow;
        slashes[slashId] = Slash({
            node: node,
            executableAt: executableAt,
            kind: kind,
            status: SlashStatus.Pending,
            reporter: msg.sender,
            // casting to 'uint96' is safe because msg.value == challengeBond <= type(uint96).max
            // forge-lint: disable-next-line(unsafe-typecast)
            bond: uint96(msg.value),
            amount: amount,
            evidenceId: evidenceId
        });
        emit SlashProposed(slashId, node, kind, evidenceId, amount, msg.sender, executableAt);
    }

    /// @dev Sums the stake of the active verifiers that signed `digest` (strictly ascending signers) and
    /// reverts unless it reaches 2/3 of `total`. `excluded` may not sign (address(0): nobody excluded,
    /// ECDSA never recovers it).
    function _checkQuorum(bytes32 digest, bytes[] calldata signatures, address excluded, uint256 total)
        internal
        view
        returns (uint256 signedStake)
    {
        if (total == 0) revert NoVerifiers();
        address previous;
        for (uint256 i; i < signatures.length; ++i) {
            address signer = ECDSA.recoverCalldata(digest, signatures[i]);
            if (signer <= previous) revert SignersNotSorted(previous, signer);
            if (signer == excluded) revert AccusedSigned(signer);
            Verifier storage v = verifiers[signer];
            if (v.status != VerifierStatus.Active) revert NotActiveVerifier(signer);
            signedStake += v.stake;
            previous = signer;
        }
        if (signedStake * 3 < total * 2) revert QuorumNotReached(signedStake, total);
    }

    function _pendingSlash(uint256 slashId) internal view returns (Slash storage s) {
        s = slashes[slashId];
        if (s.status != SlashStatus.Pending) revert SlashNotPending(slashId, s.status);
    }

    function _registered(address node) internal view returns (Node storage n) {
        n = _nodes[node];
        if (n.status == NodeStatus.None) revert NotRegistered(node);
    }

    function _credit(address account, uint256 amount) internal {
        if (amount == 0) return;
        owed[account] += amount;
        emit Credited(account, amount);
    }

    function _send(address to, uint256 amount) internal {
        if (amount == 0) return;
        (bool ok,) = payable(to).call{value: amount}("");
        if (!ok) revert TransferFailed(to, amount);
    }

    function _checkEndpoint(string calldata endpoint) internal pure {
        uint256 len = bytes(endpoint).length;
        if (len == 0 || len > MAX_ENDPOINT_LENGTH) revert InvalidEndpointLength(len, MAX_ENDPOINT_LENGTH);
    }

    function _listKey(bytes32 manifestHash, uint32 shardIndex) internal pure returns (bytes32) {
        return keccak256(abi.encode(manifestHash, shardIndex));
    }

    function _listAdd(address node, Node storage n) internal {
        address[] storage list = _shardNodes[_listKey(n.manifestHash, n.shardIndex)];
        list.push(node);
        // casting to 'uint32' is safe: 2^32 nodes on one shard would cost more gas than exists
        // forge-lint: disable-next-line(unsafe-typecast)
        n.listPosition = uint32(list.length);
    }

    function _listRemove(Node storage n) internal {
        address[] storage list = _shardNodes[_listKey(n.manifestHash, n.shardIndex)];
        uint256 index = n.listPosition - 1;
        uint256 last = list.length - 1;
        if (index != last) {
            address moved = list[last];
            list[index] = moved;
            // casting to 'uint32' is safe because positions come from a list bounded by _listAdd
            // forge-lint: disable-next-line(unsafe-typecast)
            _nodes[moved].listPosition = uint32(index + 1);
        }
        list.pop();
        n.listPosition = 0;
    }

    function _toUint128(uint256 x) internal pure returns (uint128) {
        if (x > type(uint128).max) revert AmountTooLarge(x); // unreachable with real ETH supply
        // casting to 'uint128' is safe because of the check above
        // forge-lint: disable-next-line(unsafe-typecast)
        return uint128(x);
    }
}
