"""Ledger and settlement costs: receipt ingestion rate, settlement gas per node, claim gas.

    python bench/ledger.py [--receipts 20000] [--batch 1000] [--nodes 10,1000]

* ``receipts_per_s``: signed receipts (made beforehand, not timed) are *checked* — the signer recovered
  from the EIP-712 signature with ``Receipt.signer`` and compared with the claimed node — and recorded in
  a SQLite ledger file (WAL) with ``Ledger.record_receipts`` in batches; one process, wall time of the
  whole loop. The two halves are also timed on their own (``recover_per_s``, ``record_per_s``), and
  ``recover_prototype_per_s`` times a prototype recovery (same checks, domain separator cached, coincurve
  called directly) that is *not* the production path: it shows what the Python overhead costs.
* ``settle_gas``: gas of the one ``Rewards.settle`` transaction for an epoch with N nodes (3 verifier
  signatures), on a real anvil started for the run, each N from the same state after a warm-up epoch
  (``first_settlement_1_node`` is the very first settlement, which pays for zero→non-zero storage);
  ``settle_gas_per_node`` = settle gas / N.
* ``claim_gas``: gas of one node's ``Rewards.claim`` with its Merkle proof from the ledger (proof length
  ⌈log2 N⌉).

Prints readable lines, then one JSON line last. The machine's load average is included: the numbers are
wall-clock and drop when other work shares the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import coincurve
from Crypto.Hash import keccak as _keccak_mod

from veriswarm.deploy.devnet import free_port, start_devnet, stop_devnet
from veriswarm.incentives.chain import Deployment
from veriswarm.incentives.ledger import Ledger, ReceiptEntry
from veriswarm.incentives.settlement import claim, settle_epoch
from veriswarm.receipts import Receipt, ReceiptDomain, address_of, hex32

ETHER = 10**18
_HALF_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141 // 2


def _keccak(data: bytes) -> bytes:
    return _keccak_mod.new(digest_bits=256, data=data).digest()


def make_receipts(n: int, keys: list[bytes], domain: ReceiptDomain) -> list[tuple[Receipt, str]]:
    manifest = hex32(os.urandom(32))
    out: list[tuple[Receipt, str]] = []
    for i in range(n):
        key = keys[i % len(keys)]
        r = Receipt(manifest_hash=manifest, shard_index=i % 4, session_id=hex32(os.urandom(32)), step=i, start_pos=i,
                    num_tokens=1, input_hash=hex32(os.urandom(32)), context_hash=hex32(os.urandom(32)),
                    output_hash=hex32(os.urandom(32)), request_nonce=hex32(os.urandom(32)), timestamp_ms=1_700_000_000_000 + i)
        out.append((r.signed(key, domain), address_of(key)))
    return out


def prototype_signer(r: Receipt, separator: bytes) -> bytes:
    """NOT the production path: the same checks as ``Receipt.signer`` (hex format, v ∈ {27, 28}, low s) with
    the domain separator computed once and coincurve called directly; returns the 20-byte address. Used only
    to show how much of the ingestion time is Python overhead around the elliptic-curve recovery."""
    sig = r.signature
    if len(sig) != 132 or not sig.startswith("0x"):
        raise ValueError("signature format")
    raw = bytes.fromhex(sig[2:])
    v, s = raw[64], int.from_bytes(raw[32:64], "big")
    if v not in (27, 28) or not 0 < s <= _HALF_N:
        raise ValueError("malleable or malformed signature")
    digest = _keccak(b"\x19\x01" + separator + r.struct_hash())
    pub = coincurve.PublicKey.from_signature_and_message(raw[:64] + bytes([v - 27]), digest, hasher=None)
    return _keccak(pub.format(compressed=False)[1:])[-20:]


def bench_ingest(n: int, batch: int, workdir: Path) -> dict[str, float]:
    domain = ReceiptDomain(31337, "0x5fbdb2315678afecb367f032d93f642f64180aa3")
    keys = [os.urandom(32) for _ in range(64)]
    signed = make_receipts(n, keys, domain)

    t0 = time.perf_counter()
    for r, node in signed[: min(n, 5000)]:
        assert r.signer(domain) == node
    recover_rate = min(n, 5000) / (time.perf_counter() - t0)
    separator = domain.separator()
    t0 = time.perf_counter()
    for r, node in signed[: min(n, 5000)]:
        assert prototype_signer(r, separator) == bytes.fromhex(node[2:])
    prototype_rate = min(n, 5000) / (time.perf_counter() - t0)

    ledger = Ledger(f"sqlite:///{workdir / 'record-only.db'}")
    ledger.create_schema()
    entries = [ReceiptEntry(r, node, 8, 1) for r, node in signed]
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        ledger.record_receipts(entries[i:i + batch])
    record_rate = n / (time.perf_counter() - t0)
    ledger.close()

    ledger = Ledger(f"sqlite:///{workdir / 'ingest.db'}")
    ledger.create_schema()
    t0 = time.perf_counter()
    recorded = 0
    for i in range(0, n, batch):
        chunk = []
        for r, node in signed[i:i + batch]:
            if r.signer(domain) != node:  # the check: signature recovers the node's key
                raise AssertionError("bad signature in the bench data")
            chunk.append(ReceiptEntry(r, node, 8, 1))
        recorded += ledger.record_receipts(chunk)
    rate = n / (time.perf_counter() - t0)
    assert recorded == n
    ledger.close()
    return {"receipts_per_s": rate, "recover_per_s": recover_rate, "record_per_s": record_rate,
            "recover_prototype_per_s": prototype_rate}


def bench_gas(dep: Deployment, sizes: list[int], workdir: Path) -> tuple[dict[str, int], dict[str, float], dict[str, int]]:
    """Each size is settled as epoch 2 from the same chain state (snapshot/revert), after a warm-up epoch 1:
    the first settlement ever pays extra for zero→non-zero storage writes (reported separately)."""
    chain = dep.chain()
    settle_gas: dict[str, int] = {}
    per_node: dict[str, float] = {}
    claim_gas: dict[str, int] = {}
    warm = Ledger(f"sqlite:///{workdir / 'gas-warmup.db'}")
    warm.create_schema()
    warm.record_receipts([ReceiptEntry(r, node, 8, 1) for r, node in make_receipts(1, [os.urandom(32)], dep.domain)])
    first = settle_epoch(warm, dep, 1, ETHER, chain=chain)
    settle_gas["first_settlement_1_node"] = int(first.gas_used or 0)
    print(f"first settlement on this chain (1 node): {first.gas_used:,} gas (zero→non-zero storage writes)")
    warm.close()
    for n in sizes:
        snap = chain.snapshot()
        keys = [os.urandom(32) for _ in range(n)]
        ledger = Ledger(f"sqlite:///{workdir / f'gas-{n}.db'}")
        ledger.create_schema()
        ledger.record_receipts([ReceiptEntry(r, node, 8, 2) for r, node in make_receipts(n, keys, dep.domain)])
        result = settle_epoch(ledger, dep, 2, ETHER, chain=chain)
        assert result.gas_used is not None and result.nodes == n
        settle_gas[str(n)] = result.gas_used
        per_node[str(n)] = result.gas_used / n
        claimant = keys[n // 2]
        assert dep.faucet is not None
        chain.transfer(dep.faucet.key, address_of(claimant), ETHER // 100)
        _, receipt = claim(ledger, dep, 2, claimant, chain=chain)
        claim_gas[str(n)] = receipt.gas_used
        proof_len = len(ledger.proof(2, address_of(claimant))[1])
        print(f"epoch with {n:>5} nodes: settle {result.gas_used:,} gas ({result.gas_used / n:,.1f}/node), "
              f"claim {receipt.gas_used:,} gas ({proof_len}-hash proof)")
        ledger.close()
        chain.revert(snap)
    return settle_gas, per_node, claim_gas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--receipts", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=1_000)
    ap.add_argument("--nodes", default="10,1000", help="node counts of the settled epochs")
    args = ap.parse_args()
    sizes = [int(s) for s in args.nodes.split(",")]
    with tempfile.TemporaryDirectory(prefix="veriswarm-bench-") as tmp:
        work = Path(tmp)
        ingest = bench_ingest(args.receipts, args.batch, work)
        print(f"{args.receipts} receipts, batches of {args.batch}: {ingest['receipts_per_s']:,.0f} checked+recorded/s "
              f"(recover alone {ingest['recover_per_s']:,.0f}/s, record alone {ingest['record_per_s']:,.0f}/s; "
              f"prototype recovery without the Python overhead {ingest['recover_prototype_per_s']:,.0f}/s)")
        dep = start_devnet(work / "devnet", port=free_port(), die_with_parent=True)
        try:
            settle_gas, per_node, claim_gas = bench_gas(dep, sizes, work)
        finally:
            stop_devnet(work / "devnet")
    load = os.getloadavg()[0]
    print(json.dumps({"receipts_per_s": round(ingest["receipts_per_s"]), "recover_per_s": round(ingest["recover_per_s"]),
                      "record_per_s": round(ingest["record_per_s"]),
                      "recover_prototype_per_s": round(ingest["recover_prototype_per_s"]), "receipts": args.receipts, "batch": args.batch,
                      "settle_gas": settle_gas, "settle_gas_per_node": {k: round(v, 1) for k, v in per_node.items()},
                      "claim_gas": claim_gas, "verifier_signatures": len(dep.verifiers), "cpus": os.cpu_count(),
                      "load_avg_1m": round(load, 2)}))


if __name__ == "__main__":
    main()
