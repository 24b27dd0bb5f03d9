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


class HttpSink:
    """Posts each hop to a verifier (``POST {url}/v1/hops``) from a background thread, so generation
    never waits on the verifier. Delivery is best effort: failures are counted, not raised."""

    def __init__(self, url: str, *, max_queue: int = 10_000, timeout_s: float = 10.0) -> None:
        import queue

        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.sent = 0
        self.failed = 0
        self._queue: queue.Queue[HopRecord | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="veriswarm-hop-sink", daemon=True)
        self._thread.start()

    def submit(self, record: HopRecord) -> None:
        import queue

        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.failed += 1  # queue full: the verifier is not keeping up; drop rather than stall generation

    def _run(self) -> None:
        import urllib.request

        from .protocol import PROTOCOL_VERSION, VERSION_HEADER, HopSubmission, encode_envelope

        while (record := self._queue.get()) is not None:
            body = encode_envelope(HopSubmission(receipt=record.receipt.to_json(), node_url=record.node_url,
                                                 node_address=record.node_address,
                                                 input_bytes=len(record.input_frame)),
                                   record.input_frame + record.output_frame)
            req = urllib.request.Request(f"{self.url}/v1/hops", data=body, method="POST",
                                         headers={VERSION_HEADER: PROTOCOL_VERSION,
                                                  "Content-Type": "application/octet-stream"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s):
                    self.sent += 1
            except OSError:
                self.failed += 1
            finally:
                self._queue.task_done()

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every submitted hop was posted (or failed)."""
        import time

        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join(timeout=5)


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
