"""Stateful property test: any sequence of ledger operations keeps the books straight."""

from __future__ import annotations

import os
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from veriswarm.incentives.errors import LedgerError
from veriswarm.incentives.ledger import Ledger, ReceiptEntry
from veriswarm.receipts import Receipt, ReceiptDomain, address_of, hex32

KEYS = [bytes([i + 1]) * 32 for i in range(4)]
NODES = [address_of(k) for k in KEYS]


class LedgerMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.ledger = Ledger(f"sqlite:///{self.dir}/l.db")
        self.ledger.create_schema()
        self.receipts: dict[str, tuple[int, int]] = {}  # id -> (node index, epoch)
        self.pools: dict[int, int] = {}
        self.faulted: set[int] = set()

    def teardown(self) -> None:
        self.ledger.close()

    @rule(node=st.integers(0, 3), epoch=st.integers(0, 3), tokens=st.integers(1, 64), n=st.integers(1, 5),
          repeat=st.booleans())
    def record(self, node: int, epoch: int, tokens: int, n: int, repeat: bool) -> None:
        entries = []
        for _ in range(n):
            r = Receipt(manifest_hash="0x" + "11" * 32, shard_index=0, session_id=hex32(os.urandom(32)), step=0,
                        start_pos=0, num_tokens=tokens, input_hash=hex32(os.urandom(32)),
                        context_hash=hex32(os.urandom(32)), output_hash=hex32(os.urandom(32)),
                        request_nonce=hex32(os.urandom(32)), timestamp_ms=0).signed(KEYS[node], ReceiptDomain())
            entries.append(ReceiptEntry(r, NODES[node], 4, epoch))
        new = self.ledger.record_receipts(entries + (entries if repeat else []))
        assert new == n
        for e in entries:
            self.receipts[e.receipt.receipt_id()] = (node, epoch)

    @rule(data=st.data(), outcome=st.sampled_from(["pass", "miss", "fault"]))
    def audit(self, data: st.DataObject, outcome: str) -> None:
        if not self.receipts:
            return
        rid = data.draw(st.sampled_from(sorted(self.receipts)))
        try:
            state = self.ledger.record_outcome(rid, "0xverifier", outcome)
        except LedgerError:
            return  # already audited by this verifier: refused, nothing changed
        if outcome == "fault":
            self.faulted.add(self.receipts[rid][0])
            assert state.status == "excluded"

    @rule(epoch=st.integers(0, 3), pool=st.integers(0, 10**24))
    def allocate(self, epoch: int, pool: int) -> None:
        try:
            alloc = self.ledger.allocate_epoch(epoch, pool)
        except LedgerError:
            return
        self.pools.setdefault(epoch, pool)
        assert alloc.pool == self.pools[epoch]

    @invariant()
    def books_balance(self) -> None:
        if not hasattr(self, "ledger"):
            return
        for epoch, pool in self.pools.items():
            alloc = self.ledger.epoch(epoch)
            assert alloc is not None
            assert all(v > 0 for v in alloc.amounts.values())
            assert sum(alloc.amounts.values()) == alloc.total == pool

    @invariant()
    def reputations_bounded_and_faults_excluded(self) -> None:
        if not hasattr(self, "ledger"):
            return
        for s in self.ledger.nodes():
            assert 0.0 <= s.reputation <= 1.0
            if NODES.index(s.address) in self.faulted:
                assert s.status == "excluded"


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)
