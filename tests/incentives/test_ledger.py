"""The ledger on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import os

import pytest

from veriswarm.incentives.errors import LedgerError
from veriswarm.incentives.ledger import Ledger, ReceiptEntry
from veriswarm.incentives.merkle import MerkleTree
from veriswarm.receipts import Receipt, ReceiptDomain, address_of, hex32

KEYS = [bytes([i + 1]) * 32 for i in range(3)]
NODES = [address_of(k) for k in KEYS]


def receipt(key: bytes, step: int, tokens: int = 1) -> Receipt:
    return Receipt(manifest_hash="0x" + "11" * 32, shard_index=0, session_id=hex32(os.urandom(32)), step=step,
                   start_pos=step, num_tokens=tokens, input_hash=hex32(os.urandom(32)),
                   context_hash=hex32(os.urandom(32)), output_hash=hex32(os.urandom(32)),
                   request_nonce=hex32(os.urandom(32)), timestamp_ms=1).signed(key, ReceiptDomain())


@pytest.fixture
def ledger(ledger_url: str) -> Ledger:
    led = Ledger(ledger_url)
    led.migrate()
    yield led
    led.close()


def test_receipts_are_recorded_once(ledger: Ledger) -> None:
    entries = [ReceiptEntry(receipt(KEYS[0], i, tokens=2), NODES[0], num_layers=8, epoch=1) for i in range(5)]
    assert ledger.record_receipts(entries) == 5
    assert ledger.record_receipts(entries) == 0
    assert ledger.epoch_work(1) == {NODES[0]: 5 * 2 * 8}
    assert ledger.node(NODES[0]).reputation == ledger.params.initial_reputation


def test_outcomes_move_reputation_and_a_fault_excludes(ledger: Ledger) -> None:
    rs = [receipt(KEYS[1], i) for i in range(3)]
    ledger.record_receipts([ReceiptEntry(r, NODES[1], 8, 1) for r in rs])
    s = ledger.record_outcome(rs[0].receipt_id(), "0xverifier", "pass")
    assert s.reputation > ledger.params.initial_reputation and s.status == "active"
    with pytest.raises(LedgerError, match="already recorded"):
        ledger.record_outcome(rs[0].receipt_id(), "0xverifier", "pass")
    with pytest.raises(LedgerError, match="outcome must be"):
        ledger.record_outcome(rs[1].receipt_id(), "0xverifier", "maybe")
    with pytest.raises(LedgerError, match="unknown receipt"):
        ledger.record_outcome("0x" + "00" * 32, "0xverifier", "pass")
    s = ledger.record_outcome(rs[1].receipt_id(), "0xverifier", "fault", "output off by 3.2")
    assert s.status == "excluded" and "proven fault" in (s.excluded_reason or "")
    assert ledger.receipt(rs[1].receipt_id())["status"] == "failed"
    assert ledger.epoch_work(1) == {}  # an excluded node earns nothing for the epoch


def test_epoch_allocation_is_idempotent_and_provable(ledger: Ledger) -> None:
    for k, n in zip(KEYS, NODES, strict=True):
        ledger.record_receipts([ReceiptEntry(receipt(k, i), n, 8, 7) for i in range(4)])
    a = ledger.allocate_epoch(7, 10**18)
    assert a.status == "allocated" and sum(a.amounts.values()) == a.total == 10**18
    assert ledger.allocate_epoch(7, 10**18) == a
    with pytest.raises(LedgerError, match="already allocated"):
        ledger.allocate_epoch(7, 5)
    amount, proof = ledger.proof(7, NODES[2])
    assert MerkleTree.verify(bytes.fromhex(a.root[2:]), NODES[2], amount, [bytes.fromhex(p[2:]) for p in proof])
    ledger.mark_signed(7, ["0xsig"])
    ledger.mark_posted(7, "0x" + "ab" * 32)
    ledger.mark_posted(7, "0x" + "ab" * 32)  # re-running a finished step is a no-op
    with pytest.raises(LedgerError, match="cannot move"):
        ledger.mark_signed(7, [])
    with pytest.raises(LedgerError, match="no rewardable work"):
        ledger.allocate_epoch(8, 10**18)


def test_evidence_is_usable_once(ledger: Ledger) -> None:
    sid = ledger.record_slash(NODES[0], "0x" + "ee" * 32, "equivocation", {"why": "two outputs"})
    with pytest.raises(LedgerError, match="already used"):
        ledger.record_slash(NODES[0], "0x" + "ee" * 32, "equivocation", {})
    ledger.update_slash(sid, status="submitted", tx_hash="0x" + "cd" * 32)
    assert ledger.slashes()[0]["status"] == "submitted"
    assert ledger.node(NODES[0]).status == "excluded"


def test_alembic_schema_matches_the_models(ledger: Ledger) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from veriswarm.incentives.models import Base

    with ledger.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), Base.metadata)
    assert diff == []


def test_unreachable_database_is_a_clear_error() -> None:
    led = Ledger("postgresql+psycopg://nobody@127.0.0.1:9/none")
    with pytest.raises(LedgerError, match="unreachable"):
        led.create_schema()
