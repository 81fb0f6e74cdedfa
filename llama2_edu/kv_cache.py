"""A preallocated key/value cache for incremental decoding.

During generation every new token attends to the keys and values of all earlier tokens.
Recomputing them each step costs O(T) work per layer per token; storing them costs memory
instead: 2 * n_layers * n_kv_heads * head_dim numbers per token. GQA and MQA exist largely
to shrink this cache (see `config.kv_cache_bytes`).

The cache is allocated once, at its full size, like Meta's reference: no reallocation while
decoding, and a fixed shape that `torch.compile` can specialise on.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer, laid out (batch, kv_heads, position, head_dim)
    so that a prefix `[:, :, :end]` is directly what attention consumes."""

    def __init__(self, n_layers: int, batch_size: int, max_seq_len: int, n_kv_heads: int,
                 head_dim: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None):
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len

    def update(self, layer: int, start_pos: int, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (batch, kv_heads, T, head_dim) at positions [start_pos, start_pos + T)
        and return every key and value up to the last written position."""
        batch, _, seq_len, _ = k.shape
        end = start_pos + seq_len
        if batch > self.batch_size or end > self.max_seq_len:
            raise ValueError(
                f"KV cache holds batch {self.batch_size} x {self.max_seq_len} positions; "
                f"asked to write batch {batch} at positions {start_pos}..{end - 1}"
            )
        self.keys[layer][:batch, :, start_pos:end] = k
        self.values[layer][:batch, :, start_pos:end] = v
        return self.keys[layer][:batch, :, :end], self.values[layer][:batch, :, :end]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)
