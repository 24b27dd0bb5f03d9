"""Where receipts go after a client has checked them: the verifier and the ledger plug in here."""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .receipts import Receipt


@dataclass(frozen=True)
class HopRecord:
    """One checked hop: the receipt, who served it, and the exact frames it covers."""

    receipt: Receipt
    node_url: str
    node_address: str
    input_frame: bytes
    output_frame: bytes


class ReceiptSink(Protocol):
    def submit(self, record: HopRecord) -> None: ...


class NullSink:
    def submit(self, record: HopRecord) -> None:
        return None


class MemorySink:
    """Keeps every record in memory (tests, demos, the SDK's per-generation view)."""

    def __init__(self) -> None:
        self.records: list[HopRecord] = []
        self._lock = threading.Lock()

    def submit(self, record: HopRecord) -> None:
        with self._lock:
            self.records.append(record)


class JsonlSink:
    """Appends one JSON line per hop; frames are kept (base64) only when ``keep_frames`` is set."""

    def __init__(self, path: Path, *, keep_frames: bool = False) -> None:
        self.path = Path(path)
        self.keep_frames = keep_frames
        self._lock = threading.Lock()

    def submit(self, record: HopRecord) -> None:
        line: dict[str, object] = {
            "receipt": record.receipt.to_json(),
            "receipt_id": record.receipt.receipt_id(),
            "node_url": record.node_url,
            "node_address": record.node_address,
        }
        if self.keep_frames:
            line["input_frame"] = base64.b64encode(record.input_frame).decode()
            line["output_frame"] = base64.b64encode(record.output_frame).decode()
        with self._lock, self.path.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
