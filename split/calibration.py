"""Calibration and evaluation text for SVD compression (shipped under ``data/``, see data/README.md).

Two different public-domain books: ``calibration.txt`` (Jane Austen, *Pride and Prejudice*) feeds
every statistic a compression method computes and the held-out slice used by budget searches;
``evaluation.txt`` (Mary Shelley, *Frankenstein*) is read only by :mod:`.evaluation` for reported
perplexities. No code path in compression opens the evaluation text.

Token layout of the calibration text: statistics use windows from its start, validation windows
(perplexity targets of ``max-ppl-increase`` searches) are taken from its end; the two never overlap.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from veriswarm.errors import ConfigError

CALIBRATION_FILE = "calibration.txt"
EVALUATION_FILE = "evaluation.txt"
DATA_ENV = "VERISWARM_DATA_DIR"


def data_dir() -> Path:
    """``$VERISWARM_DATA_DIR`` or the repository's ``data/`` folder."""
    env = os.environ.get(DATA_ENV)
    path = Path(env) if env else Path(__file__).resolve().parent.parent / "data"
    if not (path / CALIBRATION_FILE).is_file():
        raise ConfigError(f"calibration text {CALIBRATION_FILE} not found in {path} (set {DATA_ENV})")
    return path


def read_text(name: str) -> str:
    return (data_dir() / name).read_text(encoding="utf-8")


def text_sha256(name: str) -> str:
    return hashlib.sha256((data_dir() / name).read_bytes()).hexdigest()


def token_ids(tokenizer: Any, text: str) -> torch.Tensor:
    """The whole text as one stream of token ids (no special tokens)."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return torch.tensor(ids, dtype=torch.long)


def windows(ids: torch.Tensor, seq_len: int, count: int, *, from_end: bool = False) -> torch.Tensor:
    """``count`` consecutive non-overlapping windows [count, seq_len] from the start (or the end)."""
    need = seq_len * count
    if count <= 0 or seq_len <= 1:
        raise ConfigError(f"need a positive number of windows of length > 1, got {count} x {seq_len}")
    if need > ids.numel():
        raise ConfigError(f"text has {ids.numel()} tokens, {count} windows of {seq_len} need {need}")
    chunk = ids[ids.numel() - need:] if from_end else ids[:need]
    return chunk.view(count, seq_len).clone()


@dataclass(frozen=True)
class CalibrationSet:
    """Token windows from the calibration text: ``stats`` for statistics, ``val`` for searches."""

    stats: torch.Tensor  # [n, seq_len]
    val: torch.Tensor  # [m, val_len]
    sha256: str

    @classmethod
    def build(cls, tokenizer: Any, *, tokens: int, seq_len: int, val_tokens: int,
              val_len: int = 512) -> CalibrationSet:
        ids = token_ids(tokenizer, read_text(CALIBRATION_FILE))
        n_stats = max(1, tokens // seq_len)
        val_len = min(val_len, max(2, val_tokens))
        n_val = max(1, val_tokens // val_len)
        if n_stats * seq_len + n_val * val_len > ids.numel():
            raise ConfigError(f"the calibration text has {ids.numel()} tokens; {n_stats * seq_len} for "
                              f"statistics + {n_val * val_len} held out do not fit")
        return cls(stats=windows(ids, seq_len, n_stats), val=windows(ids, val_len, n_val, from_end=True),
                   sha256=text_sha256(CALIBRATION_FILE))


def evaluation_windows(tokenizer: Any, *, tokens: int = 16384, seq_len: int = 1024) -> torch.Tensor:
    """Non-overlapping windows of the evaluation text (reporting only: never used to compress)."""
    ids = token_ids(tokenizer, read_text(EVALUATION_FILE))
    seq_len = min(seq_len, tokens)
    return windows(ids, seq_len, max(1, tokens // seq_len))
