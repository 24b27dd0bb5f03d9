"""Ledger tables (SQLAlchemy 2). Amounts are integer base units (wei) stored exactly as decimal strings."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    types,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Wei(types.TypeDecorator[int]):
    """uint256 amounts: exact on every backend (SQLite has no 256-bit integers), as 78-digit strings."""

    impl = String(78)
    cache_ok = True

    def process_bind_param(self, value: int | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if not isinstance(value, int) or value < 0 or value >= 2**256:
            raise ValueError(f"amount {value!r} is not a uint256")
        return str(value).rjust(78, "0")

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else int(value)


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class NodeRow(Base):
    __tablename__ = "nodes"
    address: Mapped[str] = mapped_column(String(42), primary_key=True)
    reputation: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | excluded
    excluded_reason: Mapped[str | None] = mapped_column(String(200), default=None)
    audits_passed: Mapped[int] = mapped_column(Integer, default=0)
    audits_failed: Mapped[int] = mapped_column(Integer, default=0)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class ReceiptRow(Base):
    __tablename__ = "receipts"
    receipt_id: Mapped[str] = mapped_column(String(66), primary_key=True)
    node_address: Mapped[str] = mapped_column(String(42), ForeignKey("nodes.address"))
    epoch: Mapped[int] = mapped_column(BigInteger)
    manifest_hash: Mapped[str] = mapped_column(String(66))
    shard_index: Mapped[int] = mapped_column(Integer)
    session_id: Mapped[str] = mapped_column(String(66))
    step: Mapped[int] = mapped_column(BigInteger)
    work: Mapped[int] = mapped_column(BigInteger)  # tokens × layers
    status: Mapped[str] = mapped_column(String(16), default="unaudited")  # unaudited | verified | failed
    receipt: Mapped[dict[str, Any]] = mapped_column(JSON)  # the signed receipt, kept as evidence
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    __table_args__ = (Index("ix_receipts_epoch_node", "epoch", "node_address"),)


class VerificationRow(Base):
    __tablename__ = "verifications"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    receipt_id: Mapped[str] = mapped_column(String(66), ForeignKey("receipts.receipt_id"))
    verifier: Mapped[str] = mapped_column(String(42))
    outcome: Mapped[str] = mapped_column(String(16))  # pass | miss | fault
    detail: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    __table_args__ = (UniqueConstraint("receipt_id", "verifier", name="uq_verification_once"),)


class EpochRow(Base):
    __tablename__ = "epochs"
    epoch: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # allocated → signed → posted; each step is recorded before the next starts (crash safety)
    status: Mapped[str] = mapped_column(String(16))
    pool: Mapped[int] = mapped_column(Wei)
    total: Mapped[int] = mapped_column(Wei)
    merkle_root: Mapped[str] = mapped_column(String(66))
    signatures: Mapped[list[str]] = mapped_column(JSON, default=list)
    tx_hash: Mapped[str | None] = mapped_column(String(66), default=None)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)


class AllocationRow(Base):
    __tablename__ = "allocations"
    epoch: Mapped[int] = mapped_column(BigInteger, ForeignKey("epochs.epoch"), primary_key=True)
    node_address: Mapped[str] = mapped_column(String(42), primary_key=True)
    amount: Mapped[int] = mapped_column(Wei)
    work: Mapped[int] = mapped_column(BigInteger)
    reputation: Mapped[float] = mapped_column(Float)
    claimed_tx: Mapped[str | None] = mapped_column(String(66), default=None)


class SlashRow(Base):
    __tablename__ = "slashes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node_address: Mapped[str] = mapped_column(String(42), ForeignKey("nodes.address"))
    evidence_id: Mapped[str] = mapped_column(String(66), unique=True)  # evidence is usable once
    kind: Mapped[str] = mapped_column(String(16))  # equivocation | verdict
    status: Mapped[str] = mapped_column(String(16), default="recorded")  # recorded | submitted | executed | vetoed
    amount: Mapped[int | None] = mapped_column(Wei, default=None)
    tx_hash: Mapped[str | None] = mapped_column(String(66), default=None)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
