"""The floor under split inference on one machine: the same shards in the same number of processes, passing
raw tensor bytes over OS pipes, with no protocol at all (no HTTP or WebSocket, no receipts, no signatures,
no checks, no routing).

``split_vs_monolithic.py`` runs it beside the real thing, so that the cost of running shards as separate
processes on the machine's cores (each hop's cold caches, hand-offs between processes) can be told apart
from the cost of veriswarm's protocol: split ÷ bare pipeline is what the protocol costs.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from multiprocessing.connection import Connection
from pathlib import Path

import torch

from veriswarm.manifest import ModelDir
from veriswarm.split.artifacts import load_head, load_shard


def _shard_worker(model_dir: str, index: int, threads: int, prefill_threads: int, inbox: Connection,
                  outbox: Connection) -> None:
    shard = load_shard(ModelDir.open(Path(model_dir)), index)
    hidden = shard.cfg.hidden_size
    cache = None
    while True:
        message = inbox.recv_bytes()
        if not message:
            outbox.send_bytes(b"")
            return
        pos = int.from_bytes(message[:4], "little")
        x = torch.frombuffer(bytearray(message[4:]), dtype=torch.float32).view(1, -1, hidden)
        torch.set_num_threads(prefill_threads if x.shape[1] > 1 else threads)  # as a node does
        if pos == 0:
            cache = shard.new_cache(shard.cfg.max_position_embeddings)
        out = shard(x, pos, cache)
        outbox.send_bytes(message[:4] + out.numpy().tobytes())


class BarePipeline:
    """N shard processes in a row, connected by pipes; ``generate`` runs greedy decoding through them (the
    first call waits for the workers to load their shards: warm it up before timing)."""

    def __init__(self, model_dir: Path, *, threads: int = 1, prefill_threads: int = 0) -> None:
        self.model_dir = model_dir
        self.threads = threads
        #: as a node's setting of the same name (0: as threads): compare with nodes that prefill alike
        self.prefill_threads = prefill_threads or threads
        md = ModelDir.open(model_dir)
        self.head = load_head(md)
        self.num_shards = len(md.manifest.shards)
        self._procs: list[mp.process.BaseProcess] = []
        self._first: Connection | None = None
        self._last: Connection | None = None

    def __enter__(self) -> BarePipeline:
        # The same short OpenMP spin as LocalSwarm gives its nodes (read by each worker's OpenMP at start).
        os.environ.setdefault("GOMP_SPINCOUNT", "1000")
        ctx = mp.get_context("spawn")
        pipes = [ctx.Pipe(duplex=False) for _ in range(self.num_shards + 1)]  # (reader, writer) pairs
        for i in range(self.num_shards):
            args = (str(self.model_dir), i, self.threads, self.prefill_threads, pipes[i][0], pipes[i + 1][1])
            proc = ctx.Process(target=_shard_worker, args=args, daemon=True)
            proc.start()
            self._procs.append(proc)
        self._first, self._last = pipes[0][1], pipes[-1][0]
        return self

    def _run(self, pos: int, x: torch.Tensor) -> torch.Tensor:
        assert self._first is not None and self._last is not None
        self._first.send_bytes(pos.to_bytes(4, "little") + x.contiguous().numpy().tobytes())
        reply = self._last.recv_bytes()
        return torch.frombuffer(bytearray(reply[4:]), dtype=torch.float32).view(1, -1, x.shape[-1])

    @torch.inference_mode()
    def generate(self, ids: list[int], n: int) -> tuple[list[int], float]:
        """Greedy ``n`` tokens after ``ids``: (token ids, seconds, prefill included)."""
        t0 = time.perf_counter()
        hidden = self._run(0, self.head.embed_tokens(torch.tensor([ids])))
        pos, out = len(ids), []
        for _ in range(n):
            token = int(self.head.logits(hidden[:, -1:])[0, -1].argmax())
            out.append(token)
            if len(out) == n:
                break
            hidden = self._run(pos, self.head.embed_tokens(torch.tensor([[token]])))
            pos += 1
        return out, time.perf_counter() - t0

    def __exit__(self, *exc: object) -> None:
        if self._first is not None:
            try:
                self._first.send_bytes(b"")
            except OSError:
                pass
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
