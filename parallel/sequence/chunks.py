"""Which rank owns which tokens, their document ids, and which attention blocks are empty.

Each sp rank holds the contiguous chunk [r·n, (r+1)·n) of every row. Document ids are
all-gathered once per forward (a few bytes per token, reused by every layer) so any rank can
build the exact mask of any (query chunk, key chunk) block and every rank agrees, without
talking, on which blocks are fully masked: those are neither sent nor computed.
"""
from __future__ import annotations

import torch


class ChunkLayout:
    def __init__(self, world: int, rank: int, n: int, docs: list[torch.Tensor] | None):
        self.world, self.rank, self.n = world, rank, n
        self.docs = docs               # per-rank doc ids [B, n], or None (one document per row)
        self._skip: dict = {}

    def offset(self, chunk: int) -> int:
        return chunk * self.n

    def doc(self, chunk: int) -> torch.Tensor | None:
        return None if self.docs is None else self.docs[chunk]

    def skipped(self, q_chunk: int, k_chunk: int, window: int | None) -> bool:
        """True when no query of q_chunk may see any key of k_chunk (causal, window, documents)."""
        key = (q_chunk, k_chunk, window)
        if key not in self._skip:
            self._skip[key] = self._compute_skip(q_chunk, k_chunk, window)
        return self._skip[key]

    def _compute_skip(self, a: int, b: int, window: int | None) -> bool:
        if b > a:
            return True
        if a == b:
            return False                                # every token sees itself
        nearest = self.offset(a) - (self.offset(b) + self.n - 1)
        if window is not None and nearest >= window:
            return True
        if self.docs is None:
            return False
        qd, kd = self.docs[a], self.docs[b]
        return not any(bool(torch.isin(qd[row], kd[row]).any()) for row in range(qd.shape[0]))

    def halo_docs(self, length: int) -> torch.Tensor | None:
        """Doc ids [B, length'] of the `length` tokens just before this rank's chunk (fewer on
        the first ranks: length' = min(length, r·n))."""
        if self.docs is None:
            return None
        before = torch.cat(self.docs[: self.rank], dim=1) if self.rank else self.docs[0][:, :0]
        return before[:, max(0, before.shape[1] - length):]
