"""Per-session key/value cache for the layers of one shard.

Storage grows by doubling up to ``max_length`` so a short session does not pay for a long one;
``reserved_bytes`` is what the session may grow to, which is what a node budgets against.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int, batch: int, kv_heads: int, head_dim: int, max_length: int,
                 dtype: torch.dtype = torch.float32) -> None:
        self.num_layers, self.batch, self.kv_heads, self.head_dim = num_layers, batch, kv_heads, head_dim
        self.max_length = max_length
        self.dtype = dtype
        self.length = 0
        self._capacity = 0
        self._k: list[torch.Tensor] = []
        self._v: list[torch.Tensor] = []

    @staticmethod
    def bytes_for(num_layers: int, batch: int, kv_heads: int, head_dim: int, length: int,
                  dtype: torch.dtype = torch.float32) -> int:
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * batch * kv_heads * head_dim * length * itemsize

    @property
    def reserved_bytes(self) -> int:
        return self.bytes_for(self.num_layers, self.batch, self.kv_heads, self.head_dim, self.max_length, self.dtype)

    @property
    def allocated_bytes(self) -> int:
        return self.bytes_for(self.num_layers, self.batch, self.kv_heads, self.head_dim, self._capacity, self.dtype)

    def _grow(self, needed: int) -> None:
        cap = max(needed, min(self.max_length, max(64, 2 * self._capacity)))
        shape = (self.batch, self.kv_heads, cap, self.head_dim)
        new_k = [torch.zeros(shape, dtype=self.dtype) for _ in range(self.num_layers)]
        new_v = [torch.zeros(shape, dtype=self.dtype) for _ in range(self.num_layers)]
        for i in range(len(self._k)):
            new_k[i][:, :, : self.length] = self._k[i][:, :, : self.length]
            new_v[i][:, :, : self.length] = self._v[i][:, :, : self.length]
        self._k, self._v, self._capacity = new_k, new_v, cap

    def write(self, layer: int, start_pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k/v [B, kv_heads, T, D] at start_pos; return views over positions 0..start_pos+T."""
        end = start_pos + k.shape[2]
        if end > self.max_length:
            raise ValueError(f"cache overflow: {end} positions exceed max_length {self.max_length}")
        if end > self._capacity:
            self._grow(end)
        self._k[layer][:, :, start_pos:end] = k
        self._v[layer][:, :, start_pos:end] = v
        return self._k[layer][:, :, :end], self._v[layer][:, :, :end]

    def advance(self, length: int) -> None:
        self.length = length
