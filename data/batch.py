"""Batch: what one training step consumes (DESIGN.md §2).

- tokens    int64 [B, T]
- labels    int64 [B, T]  next-token targets, -100 = ignore (also at document ends)
- positions int64 [B, T]  position inside the token's own document (drives RoPE)
- doc_ids   int32 [B, T]  document index inside the row; a change of value is a boundary
Under sequence parallelism a rank holds a contiguous slice [B, T/P]; positions and doc_ids
stay global values, so a rank never needs its neighbour's metadata.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass
class Batch:
    tokens: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor
    doc_ids: torch.Tensor

    def __post_init__(self) -> None:
        shape = self.tokens.shape
        for name in ("labels", "positions", "doc_ids"):
            if getattr(self, name).shape != shape:
                raise ValueError(f"Batch.{name} has shape {tuple(getattr(self, name).shape)}, tokens {tuple(shape)}")

    @property
    def shape(self) -> torch.Size:
        return self.tokens.shape

    def num_label_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(*(getattr(self, f).to(device, non_blocking=non_blocking)
                       for f in ("tokens", "labels", "positions", "doc_ids")))

    def seq_slice(self, rank: int, world: int) -> Batch:
        """The contiguous [B, T/world] slice owned by sequence-parallel rank `rank`."""
        t = self.tokens.shape[1]
        if t % world:
            raise ValueError(f"sequence length {t} is not divisible by sequence-parallel size {world}")
        n = t // world
        sl = slice(rank * n, (rank + 1) * n)
        return Batch(self.tokens[:, sl], self.labels[:, sl], self.positions[:, sl], self.doc_ids[:, sl])

    def rows(self, start: int, stop: int) -> Batch:
        return Batch(self.tokens[start:stop], self.labels[start:stop],
                     self.positions[start:stop], self.doc_ids[start:stop])
