"""The off-chain ledger: receipts, audit outcomes, reputation, epoch allocations, slashes.

Every public method is one database transaction; a crash leaves either all of it or none of it.
SQLite (file, WAL) by default; PostgreSQL through the same code (``postgresql+psycopg://…``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import sessionmaker

from veriswarm.receipts import Receipt

from .errors import LedgerError
from .mechanism import IncentiveParams, allocate, excluded, updated_reputation
from .merkle import MerkleTree
from .models import AllocationRow, Base, EpochRow, NodeRow, ReceiptRow, SlashRow, VerificationRow

OUTCOMES = ("pass", "miss", "fault")


@dataclass(frozen=True)
class ReceiptEntry:
    """A checked receipt as the ledger records it (the caller has verified signature and frames)."""

    receipt: Receipt
    node_address: str
    num_layers: int
    epoch: int

    @property
    def work(self) -> int:
        return self.receipt.num_tokens * self.num_layers


@dataclass(frozen=True)
class NodeState:
    address: str
    reputation: float
    status: str
    audits_passed: int
    audits_failed: int
    excluded_reason: str | None


@dataclass(frozen=True)
class EpochAllocation:
    epoch: int
    status: str
    pool: int
    total: int
    root: str
    amounts: dict[str, int]
    signatures: list[str]
    tx_hash: str | None


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class Ledger:
    def __init__(self, url: str = "sqlite:///veriswarm-ledger.db", params: IncentiveParams | None = None) -> None:
        self.url = url
        self.params = params or IncentiveParams()
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def create_schema(self) -> None:
        """Create the tables at the latest revision (alembic's `upgrade head` does the same; see migrate())."""
        try:
            Base.metadata.create_all(self.engine)
        except OperationalError as exc:
            raise LedgerError(f"ledger database unreachable: {exc.orig}") from None

    def migrate(self) -> None:
        from .migrate import upgrade

        upgrade(self.engine)

    def _insert(self, table: Any) -> Any:
        return (pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert)(table)

    # ---- receipts -----------------------------------------------------------------------
    def record_receipts(self, entries: Iterable[ReceiptEntry]) -> int:
        """Record checked receipts; duplicates (same receipt id) are ignored. Returns how many were new."""
        rows, nodes = [], set()
        for e in entries:
            if e.num_layers <= 0 or e.epoch < 0:
                raise LedgerError("num_layers must be positive and epoch non-negative")
            r = e.receipt
            nodes.add(e.node_address)
            rows.append({"receipt_id": r.receipt_id(), "node_address": e.node_address, "epoch": e.epoch,
                         "manifest_hash": r.manifest_hash, "shard_index": r.shard_index, "session_id": r.session_id,
                         "step": r.step, "work": e.work, "status": "unaudited", "receipt": r.to_json()})
        if not rows:
            return 0
        with self._sessions.begin() as s:
            s.execute(self._insert(NodeRow.__table__).on_conflict_do_nothing(),
                      [{"address": a, "reputation": self.params.initial_reputation, "status": "active",
                        "audits_passed": 0, "audits_failed": 0} for a in sorted(nodes)])
            inserted = s.execute(self._insert(ReceiptRow.__table__).on_conflict_do_nothing()
                                 .returning(ReceiptRow.receipt_id), rows).all()
        return len(inserted)

    # ---- verification outcomes ----------------------------------------------------------
    def record_outcome(self, receipt_id: str, verifier: str, outcome: str, detail: str = "") -> NodeState:
        """Record an audit outcome for one receipt: pass/miss move reputation; a fault excludes."""
        return self.record_audit([receipt_id], verifier, outcome, detail)

    def record_audit(self, receipt_ids: list[str], verifier: str, outcome: str, detail: str = "") -> NodeState:
        """One audit covering several receipts of one node (a re-executed session): each receipt gets the
        outcome, and the node's reputation moves once (an audit is one observation, not one per step).
        For a fault, list the receipts found faulty."""
        if outcome not in OUTCOMES:
            raise LedgerError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
        if not receipt_ids:
            raise LedgerError("an audit covers at least one receipt")
        with self._sessions.begin() as s:
            rows = [s.get(ReceiptRow, rid) for rid in receipt_ids]
            missing = [rid for rid, r in zip(receipt_ids, rows, strict=True) if r is None]
            if missing:
                raise LedgerError(f"unknown receipt {missing[0]}")
            nodes = {r.node_address for r in rows if r is not None}
            if len(nodes) != 1:
                raise LedgerError("an audit covers receipts of exactly one node")
            for rid in receipt_ids:
                s.add(VerificationRow(receipt_id=rid, verifier=verifier, outcome=outcome, detail=detail[:500]))
            try:
                s.flush()
            except IntegrityError:
                which = receipt_ids[0] if len(receipt_ids) == 1 else f"one of {len(receipt_ids)} receipts"
                raise LedgerError(f"verifier {verifier} already recorded an outcome for {which}") from None
            for row in rows:
                assert row is not None
                if outcome == "fault":
                    row.status = "failed"
                elif outcome == "pass" and row.status == "unaudited":
                    row.status = "verified"
            node = s.get(NodeRow, nodes.pop(), with_for_update=True)
            assert node is not None
            passed = outcome == "pass"
            node.audits_passed += int(passed)
            node.audits_failed += int(not passed)
            node.reputation = updated_reputation(node.reputation, passed, self.params)
            if node.status == "active":
                if outcome == "fault":
                    node.status, node.excluded_reason = "excluded", f"proven fault on {receipt_ids[0]}"
                elif excluded(node.reputation, self.params):
                    node.status, node.excluded_reason = "excluded", f"reputation {node.reputation:.3f} below floor"
            return _state(node)

    def reputation(self, address: str) -> float:
        with self._sessions() as s:
            row = s.get(NodeRow, address)
            return row.reputation if row is not None else self.params.initial_reputation

    def node(self, address: str) -> NodeState:
        with self._sessions() as s:
            row = s.get(NodeRow, address)
            if row is None:
                raise LedgerError(f"unknown node {address}")
            return _state(row)

    def nodes(self) -> list[NodeState]:
        with self._sessions() as s:
            return [_state(r) for r in s.scalars(select(NodeRow).order_by(NodeRow.address))]

    def receipt(self, receipt_id: str) -> dict[str, Any]:
        with self._sessions() as s:
            row = s.get(ReceiptRow, receipt_id)
            if row is None:
                raise LedgerError(f"unknown receipt {receipt_id}")
            return {"receipt_id": row.receipt_id, "node_address": row.node_address, "epoch": row.epoch,
                    "status": row.status, "work": row.work, "receipt": row.receipt}

    # ---- epochs -------------------------------------------------------------------------
    def epoch_work(self, epoch: int) -> dict[str, int]:
        """Work per node in an epoch, over receipts not proven faulty, of nodes not excluded."""
        with self._sessions() as s:
            q = (select(ReceiptRow.node_address, func.sum(ReceiptRow.work))
                 .join(NodeRow, NodeRow.address == ReceiptRow.node_address)
                 .where(ReceiptRow.epoch == epoch, ReceiptRow.status != "failed", NodeRow.status == "active")
                 .group_by(ReceiptRow.node_address))
            return {a: int(w) for a, w in s.execute(q)}

    def allocate_epoch(self, epoch: int, pool: int) -> EpochAllocation:
        """Fix an epoch's allocations (idempotent: a second call returns what the first stored)."""
        existing = self.epoch(epoch)
        if existing is not None:
            if existing.pool != pool:
                raise LedgerError(f"epoch {epoch} was already allocated with pool {existing.pool}, not {pool}")
            return existing
        work = self.epoch_work(epoch)
        with self._sessions.begin() as s:
            reputation = {r.address: r.reputation for r in s.scalars(select(NodeRow).where(NodeRow.address.in_(list(work))))}
            amounts = allocate(pool, work, reputation, self.params)
            if not amounts:
                raise LedgerError(f"epoch {epoch} has no rewardable work")
            tree = MerkleTree(amounts)
            s.add(EpochRow(epoch=epoch, status="allocated", pool=pool, total=sum(amounts.values()),
                           merkle_root="0x" + tree.root.hex(), signatures=[]))
            s.flush()
            for a, v in amounts.items():
                s.add(AllocationRow(epoch=epoch, node_address=a, amount=v, work=work[a], reputation=reputation[a]))
        result = self.epoch(epoch)
        assert result is not None
        return result

    def epoch(self, epoch: int) -> EpochAllocation | None:
        with self._sessions() as s:
            row = s.get(EpochRow, epoch)
            if row is None:
                return None
            amounts = {a.node_address: a.amount for a in s.scalars(select(AllocationRow).where(AllocationRow.epoch == epoch))}
            return EpochAllocation(row.epoch, row.status, row.pool, row.total, row.merkle_root, amounts,
                                   list(row.signatures), row.tx_hash)

    def mark_signed(self, epoch: int, signatures: list[str]) -> None:
        self._advance(epoch, {"allocated"}, status="signed", signatures=signatures)

    def mark_posted(self, epoch: int, tx_hash: str) -> None:
        self._advance(epoch, {"allocated", "signed"}, status="posted", tx_hash=tx_hash)

    def _advance(self, epoch: int, allowed: set[str], **values: Any) -> None:
        with self._sessions.begin() as s:
            row = s.get(EpochRow, epoch, with_for_update=True)
            if row is None:
                raise LedgerError(f"unknown epoch {epoch}")
            if row.status == values["status"]:
                return  # already there: re-running a step is a no-op
            if row.status not in allowed:
                raise LedgerError(f"epoch {epoch} is {row.status}; cannot move to {values['status']}")
            s.execute(update(EpochRow).where(EpochRow.epoch == epoch).values(**values))

    def proof(self, epoch: int, address: str) -> tuple[int, list[str]]:
        alloc = self.epoch(epoch)
        if alloc is None or address not in alloc.amounts:
            raise LedgerError(f"no allocation for {address} in epoch {epoch}")
        tree = MerkleTree(alloc.amounts)
        return alloc.amounts[address], ["0x" + p.hex() for p in tree.proof(address)]

    # ---- slashes ------------------------------------------------------------------------
    def record_slash(self, node_address: str, evidence_id: str, kind: str, detail: dict[str, Any]) -> int:
        with self._sessions.begin() as s:
            s.execute(self._insert(NodeRow.__table__).on_conflict_do_nothing(),
                      [{"address": node_address, "reputation": self.params.initial_reputation, "status": "active",
                        "audits_passed": 0, "audits_failed": 0}])
            row = SlashRow(node_address=node_address, evidence_id=evidence_id, kind=kind, detail=detail)
            s.add(row)
            try:
                s.flush()
            except IntegrityError:
                raise LedgerError(f"evidence {evidence_id} was already used") from None
            node = s.get(NodeRow, node_address)
            assert node is not None
            node.status, node.excluded_reason = "excluded", f"slashed ({kind})"
            return row.id

    def update_slash(self, slash_id: int, *, status: str, tx_hash: str | None = None, amount: int | None = None) -> None:
        with self._sessions.begin() as s:
            row = s.get(SlashRow, slash_id)
            if row is None:
                raise LedgerError(f"unknown slash {slash_id}")
            row.status = status
            row.tx_hash = tx_hash or row.tx_hash
            row.amount = amount if amount is not None else row.amount

    def slashes(self) -> list[dict[str, Any]]:
        with self._sessions() as s:
            return [{"id": r.id, "node_address": r.node_address, "evidence_id": r.evidence_id, "kind": r.kind,
                     "status": r.status, "amount": r.amount, "tx_hash": r.tx_hash}
                    for r in s.scalars(select(SlashRow).order_by(SlashRow.id))]

    def close(self) -> None:
        self.engine.dispose()


def _state(row: NodeRow) -> NodeState:
    return NodeState(row.address, row.reputation, row.status, row.audits_passed, row.audits_failed, row.excluded_reason)
