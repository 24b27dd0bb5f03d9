"""Stake-weighted verifier quorum over audit verdicts, and the penalty for voting against it.

Several verifiers audit the same session independently; each *signs* its vote (pass or fault on
(node, shard, session), with the failing receipt as evidence). The quorum rule is the contract's
``checkQuorum``: a side wins when the verifiers that signed it hold at least 2/3 of the active verifier
stake. A fault decided this way goes on chain with exactly those signatures (``slash_with_verdict``); a
minority cannot block it (a veto needs 2/3 too) and cannot slash on its own.

A verifier whose signed vote contradicts a decided outcome — e.g. one that colludes with a node and
approves its faulty sessions — is **penalised**: ``penalty_bps`` of its bond is forfeited and its voting
weight drops accordingly. Its signed vote plus the decided outcome (whose fault anyone can re-check by
re-execution, and by the zk proof of the dispute) is the evidence. So is a signed approval of a honeypot
(a session with a planted fault): :meth:`VerifierQuorum.penalise_honeypot_approval`.

The penalties are booked here (the off-chain record, :attr:`VerifierQuorum.penalties`) and, when the quorum
has a :class:`~veriswarm.verifier.slashing.ChainSlasher`, also settled on chain with
``Staking.slashVerifier``: a ``VerifierFault`` (accused, kind, evidence hash = the accused's vote digest,
bps) signed by a 2/3 stake-weighted quorum of the *other* verifiers (docs/verification.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from eth_keys import keys
from eth_keys.exceptions import BadSignature, ValidationError
from eth_utils import keccak, to_checksum_address

from veriswarm.errors import VeriswarmError
from veriswarm.incentives.chain import VerifierFaultKind, VerifierSlash
from veriswarm.incentives.errors import ChainError

from .reexec import SessionVerdict
from .slashing import ChainSlasher

VOTE_DOMAIN = b"veriswarm/verdict-vote/1"
log = logging.getLogger("veriswarm.verifier")


class QuorumError(VeriswarmError):
    """A vote is malformed, badly signed, from an unknown verifier, or about another session."""


@dataclass(frozen=True)
class Vote:
    """One verifier's signed verdict on one node's session on one shard."""

    verifier: str
    node: str
    shard: int
    session: str
    passed: bool
    evidence: str = ""  # receipt id of the first failing step ("" for a pass)
    signature: str = ""

    def digest(self) -> bytes:
        body = {"node": self.node.lower(), "shard": self.shard, "session": self.session, "passed": self.passed,
                "evidence": self.evidence}
        return bytes(keccak(VOTE_DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()))

    @classmethod
    def cast(cls, verdict: SessionVerdict, private_key: bytes) -> Vote:
        """Sign a vote for ``verdict`` with the verifier's key."""
        first = verdict.first_failure
        evidence = "" if verdict.passed else (first.receipt_id if first is not None else verdict.problem[:66])
        pk = keys.PrivateKey(private_key)
        vote = cls(to_checksum_address(pk.public_key.to_canonical_address()), verdict.node_address,
                   verdict.shard_index, verdict.session_id, verdict.passed, evidence)
        v, r, s = pk.sign_msg_hash(vote.digest()).vrs
        return cls(**{**vote.__dict__, "signature": "0x" + (r.to_bytes(32, "big") + s.to_bytes(32, "big")
                                                           + bytes([v + 27])).hex()})

    def signer(self) -> str:
        raw = bytes.fromhex(self.signature.removeprefix("0x")) if isinstance(self.signature, str) else b""
        if len(raw) != 65 or raw[64] not in (27, 28):
            raise QuorumError(f"vote of {self.verifier}: signature must be 65 bytes r ‖ s ‖ v")
        try:
            pub = keys.Signature(signature_bytes=raw[:64] + bytes([raw[64] - 27])).recover_public_key_from_msg_hash(
                self.digest())
        except (BadSignature, ValidationError, ValueError) as exc:
            raise QuorumError(f"vote of {self.verifier}: signature does not recover: {exc}") from None
        return str(pub.to_checksum_address())


@dataclass(frozen=True)
class Penalty:
    verifier: str
    amount: int  # wei forfeited: what the chain took when settled there, else penalty_bps of the booked stake
    reason: str
    vote: Vote  # the verifier's own signed vote against the decided outcome (or approving a honeypot)
    kind: VerifierFaultKind = VerifierFaultKind.VOTE_AGAINST_OUTCOME
    onchain: VerifierSlash | None = None  # the Staking.slashVerifier that settled it, when a chain is configured
    onchain_error: str = ""  # why settling it on chain failed (the book entry stands)


@dataclass(frozen=True)
class QuorumOutcome:
    node: str
    shard: int
    session: str
    outcome: str  # "fault" | "pass" | "undecided"
    fault_stake: int
    pass_stake: int
    total_stake: int
    votes: tuple[Vote, ...]

    @property
    def winners(self) -> list[Vote]:
        return [v for v in self.votes if self.outcome != "undecided" and v.passed == (self.outcome == "pass")]

    @property
    def dissenters(self) -> list[Vote]:
        return [v for v in self.votes if self.outcome != "undecided" and v.passed != (self.outcome == "pass")]


@dataclass
class VerifierQuorum:
    """The active verifier set with its stakes (wei), as ``Staking.verifiers`` lists them, plus the bond
    penalties. ``penalty_bps`` of a dissenter's remaining stake is forfeited per offence: booked in
    ``penalties`` always, and slashed on chain (``Staking.slashVerifier``) when ``slasher`` is set — then the
    chain's result sets the verifier's weight here (a verifier left below ``minVerifierStake`` leaves the set)."""

    stakes: dict[str, int]
    penalty_bps: int = 2000
    penalties: list[Penalty] = field(default_factory=list)
    slasher: ChainSlasher | None = None

    def __post_init__(self) -> None:
        if not self.stakes or any(s <= 0 for s in self.stakes.values()):
            raise QuorumError("a quorum needs verifiers with positive stake")
        if not 0 <= self.penalty_bps <= 10_000:
            raise QuorumError("penalty_bps must be within 0..10000")
        if self.slasher is not None and self.penalty_bps > 5_000:
            raise QuorumError("penalty_bps above Staking.MAX_VERIFIER_SLASH_BPS (5000) cannot be settled on chain")
        self.stakes = {to_checksum_address(a): int(s) for a, s in self.stakes.items()}

    @classmethod
    def from_chain(cls, staking: object, addresses: Iterable[str], *, penalty_bps: int = 2000,
                   slasher: ChainSlasher | None = None) -> VerifierQuorum:
        """Stakes of the *active* verifiers among ``addresses``, read from the Staking contract; with ``slasher``
        the penalties are also slashed there."""
        stakes = {}
        for a in addresses:
            record = staking.call("verifiers", a)  # type: ignore[attr-defined]
            if int(record["status"]) == 2:  # VerifierStatus.Active
                stakes[a] = int(record["stake"])
        return cls(stakes, penalty_bps, slasher=slasher)

    @property
    def total(self) -> int:
        return sum(self.stakes.values())

    def decide(self, votes: Sequence[Vote]) -> QuorumOutcome:
        """Stake-weighted outcome of the votes on one session: a side with ≥ 2/3 of the total stake wins."""
        if not votes:
            raise QuorumError("no votes")
        key = (votes[0].node.lower(), votes[0].shard, votes[0].session)
        seen: set[str] = set()
        for v in votes:
            if (v.node.lower(), v.shard, v.session) != key:
                raise QuorumError("votes are about different sessions")
            signer = v.signer()
            if signer != to_checksum_address(v.verifier):
                raise QuorumError(f"vote claims verifier {v.verifier} but is signed by {signer}")
            if signer not in self.stakes:
                raise QuorumError(f"{signer} is not an active verifier")
            if signer in seen:
                raise QuorumError(f"{signer} voted twice")
            seen.add(signer)
        fault = sum(self.stakes[to_checksum_address(v.verifier)] for v in votes if not v.passed)
        passed = sum(self.stakes[to_checksum_address(v.verifier)] for v in votes if v.passed)
        total = self.total
        outcome = "fault" if 3 * fault >= 2 * total else "pass" if 3 * passed >= 2 * total else "undecided"
        return QuorumOutcome(votes[0].node, votes[0].shard, votes[0].session, outcome, fault, passed, total, tuple(votes))

    def settle(self, outcome: QuorumOutcome) -> list[Penalty]:
        """Penalise every verifier that signed the losing side of a decided outcome (nothing if undecided)."""
        out = []
        for vote in outcome.dissenters:
            side = "approved" if vote.passed else "flagged"
            reason = (f"{side} session {outcome.session[:18]}… of {outcome.node} on shard {outcome.shard} against a "
                      f"{outcome.outcome} decided by {outcome.fault_stake if outcome.outcome == 'fault' else outcome.pass_stake}"
                      f"/{outcome.total_stake} of the stake")
            out.append(self._penalise(vote, VerifierFaultKind.VOTE_AGAINST_OUTCOME, reason))
        return out

    def penalise_honeypot_approval(self, vote: Vote, session_id: str, shard: int) -> Penalty:
        """Penalise a verifier whose signed vote *passed* a honeypot session (``session_id`` on ``shard``, a
        planted fault the honeypot's maker knows): booked, and slashed on chain when a slasher is set."""
        who = vote.signer()
        if who != to_checksum_address(vote.verifier):
            raise QuorumError(f"vote claims verifier {vote.verifier} but is signed by {who}")
        if who not in self.stakes:
            raise QuorumError(f"{who} is not an active verifier")
        if (vote.session, vote.shard) != (session_id, shard) or not vote.passed:
            raise QuorumError("the vote does not approve that honeypot session")
        reason = f"approved honeypot session {session_id[:18]}… on shard {shard} (a planted fault)"
        return self._penalise(vote, VerifierFaultKind.HONEYPOT_APPROVAL, reason)

    def _penalise(self, vote: Vote, kind: VerifierFaultKind, reason: str) -> Penalty:
        who = to_checksum_address(vote.verifier)
        stake = self.stakes.get(who, 0)  # 0 once it has left the set (e.g. slashed below the minimum)
        amount = stake * self.penalty_bps // 10_000
        stake -= amount
        onchain, error = None, ""
        if self.slasher is not None:
            # Evidence hash = the digest of the accused's own signed vote: one on-chain slash per vote.
            try:
                onchain = self.slasher.verifier_fault(who, kind, vote.digest(), self.penalty_bps)
            except ChainError as exc:
                error = str(exc)
                log.warning("penalty of %s booked off chain only: %s", who, error)
            else:  # the chain is the truth: what it took, and the voting weight it left
                amount = onchain.amount
                stake = 0 if onchain.left_quorum or who not in self.stakes else onchain.remaining_stake
        if stake > 0:
            self.stakes[who] = stake
        else:
            self.stakes.pop(who, None)
        penalty = Penalty(who, amount, reason, vote, kind, onchain, error)
        self.penalties.append(penalty)
        return penalty


def group_votes(votes: Iterable[Vote]) -> dict[tuple[str, int, str], list[Vote]]:
    """Votes by (node, shard, session), for :meth:`VerifierQuorum.decide`."""
    out: dict[tuple[str, int, str], list[Vote]] = {}
    for v in votes:
        out.setdefault((v.node.lower(), v.shard, v.session), []).append(v)
    return out


def votes_of(verdicts: Iterable[SessionVerdict], private_key: bytes) -> list[Vote]:
    return [Vote.cast(v, private_key) for v in verdicts]


__all__ = ["Penalty", "QuorumError", "QuorumOutcome", "VerifierQuorum", "Vote", "group_votes", "votes_of"]
