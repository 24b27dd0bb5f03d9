"""Cross-hop links: hop i's committed input must be hop i−1's committed output.

Each receipt signs the sha256 of the exact input and output frames of one hop. Within a session, the frame
shard i received at step s is the frame shard i−1 returned at step s, carried unchanged by the client (or,
with server-to-server relay, by node i−1 itself). So whenever both hops of a link are submitted, the
verifier can check ``receipt_i.inputHash == receipt_{i−1}.outputHash`` without any compute, in whichever
order the two hops arrive.

What a broken link proves, and what it does not: both receipts are node-signed (the intake checks every
signature), so the pair is non-repudiable evidence that *the frame changed between the two nodes*. It does
not say who changed it: each node's receipt is consistent with what that node says it received and
returned, and neither is wrong about its own hop (re-execution judges that separately). The frame was
altered by whoever carried it — the submitting client, a relay in between, or (with node-to-node relay)
node i−1 sending other bytes than it signed or node i signing other bytes than it received; two receipts
alone cannot separate those last two. A link fault is therefore recorded as a verdict against the *link*
(both receipts kept as evidence), never as a slash or reputation loss of either node.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from veriswarm.frames import CODE_DTYPES, MAGIC, dtype_name
from veriswarm.receipts import Receipt
from veriswarm.sinks import HopRecord

#: who can have altered a frame between two node-signed receipts (see the module docstring)
CARRIER_BLAME = ("the frame carrier: the submitting client or a relay between the nodes (with node-to-node relay: "
                 "the upstream node's send or the downstream node's receipt); neither node's own hop is at fault")


def frame_dtype(frame: bytes) -> str:
    """The wire dtype named in a tensor frame's header ("" if the header is not a frame's)."""
    if len(frame) < 6 or frame[:4] != MAGIC or frame[5] not in CODE_DTYPES:
        return ""
    return dtype_name(CODE_DTYPES[frame[5]])


@dataclass(frozen=True)
class LinkEnd:
    """One hop as the link index keeps it: the signed receipt and the wire format of its frames."""

    receipt: Receipt
    node_address: str
    node_url: str
    input_dtype: str
    output_dtype: str

    @classmethod
    def of(cls, record: HopRecord) -> LinkEnd:
        return cls(record.receipt, record.node_address, record.node_url, frame_dtype(record.input_frame),
                   frame_dtype(record.output_frame))


@dataclass(frozen=True)
class LinkFault:
    """Shard ``i``'s signed input at ``step`` is not shard ``i−1``'s signed output at that step."""

    upstream: LinkEnd  # shard i−1
    downstream: LinkEnd  # shard i
    reason: str

    @property
    def session_id(self) -> str:
        return self.downstream.receipt.session_id

    @property
    def step(self) -> int:
        return self.downstream.receipt.step

    def summary(self) -> str:
        up, down = self.upstream.receipt, self.downstream.receipt
        return (f"LINK broken at step {down.step}: shard {down.shard_index}'s signed input is not shard "
                f"{up.shard_index}'s signed output ({self.reason})")

    def to_json(self) -> dict[str, object]:
        return {"kind": "link", "session": self.session_id, "step": self.step,
                "upstream": {"shard": self.upstream.receipt.shard_index, "node": self.upstream.node_address,
                             "receipt": self.upstream.receipt.to_json()},
                "downstream": {"shard": self.downstream.receipt.shard_index, "node": self.downstream.node_address,
                               "receipt": self.downstream.receipt.to_json()},
                "reason": self.reason, "blame": CARRIER_BLAME}


def compare(upstream: LinkEnd, downstream: LinkEnd) -> str | None:
    """"" when the link holds, a reason when it is broken, None when the two hops are not comparable
    (another wire format: the hashes are of different encodings, so equality is not expected)."""
    up, down = upstream.receipt, downstream.receipt
    if upstream.output_dtype != downstream.input_dtype:
        return None
    if (up.start_pos, up.num_tokens) != (down.start_pos, down.num_tokens):
        return (f"positions {down.start_pos}+{down.num_tokens} at shard {down.shard_index} vs "
                f"{up.start_pos}+{up.num_tokens} at shard {up.shard_index}")
    if down.input_hash != up.output_hash:
        return f"inputHash {down.input_hash[:18]}… != upstream outputHash {up.output_hash[:18]}…"
    return ""


@dataclass
class _Slot:
    ends: list[LinkEnd] = field(default_factory=list)
    added: float = field(default_factory=time.monotonic)


class LinkIndex:
    """Hops by (manifest, session, shard, step), so each new hop is checked against its neighbours at once.

    Not thread-safe: the verifier calls it under its own lock. Memory is bounded by :meth:`prune` (entries
    older than the verifier's retention are dropped; a link whose other end arrives later is not checked).
    """

    def __init__(self) -> None:
        self._slots: dict[tuple[str, str, int, int], _Slot] = {}
        self.checked = 0
        self.uncomparable = 0

    def add(self, record: HopRecord) -> list[LinkFault]:
        """Index a hop and check it against the hops of shards i−1 and i+1 at the same step already here."""
        end = LinkEnd.of(record)
        r = end.receipt
        faults: list[LinkFault] = []
        for neighbour, is_upstream in ((r.shard_index - 1, True), (r.shard_index + 1, False)):
            if neighbour < 0:
                continue
            slot = self._slots.get((r.manifest_hash, r.session_id, neighbour, r.step))
            for other in slot.ends if slot else []:
                up, down = (other, end) if is_upstream else (end, other)
                reason = compare(up, down)
                if reason is None:
                    self.uncomparable += 1
                    continue
                self.checked += 1
                if reason:
                    faults.append(LinkFault(up, down, reason))
        self._slots.setdefault((r.manifest_hash, r.session_id, r.shard_index, r.step), _Slot()).ends.append(end)
        return faults

    def prune(self, max_age_s: float, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        stale = [k for k, s in self._slots.items() if now - s.added > max_age_s]
        for k in stale:
            del self._slots[k]
        return len(stale)

    def __len__(self) -> int:
        return len(self._slots)
