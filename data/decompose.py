"""Dataset Decomposition: documents cut into power-of-two pieces, one bucket per length.

A document of n tokens is cut by the binary expansion of n, longest piece first: n = 13 with
min 1 gives pieces of 8, 4, 1 at offsets 0, 8, 12. Bits below `min_len` are the tail that is
dropped (the only tokens that land in no piece). A piece longer than `max_len` is re-drawn:
its bucket is drawn uniformly from the allowed lengths and it is cut into equal pieces of that
length, so every bucket gets the same expected number of tokens from oversize pieces and
every token still lands in exactly one piece. Each piece later becomes one row on its own
(positions from 0, no other document in the row), the DD paper's "one unique document per
sequence".

Everything is computed from the document lengths alone (lengths.npy), vectorised per bit,
so a corpus of millions of documents decomposes in seconds without reading a shard.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.errors import DataError


@dataclass
class Decomposition:
    """Pieces per bucket: bucket_lens[k] = 2^(log_min + k); docs[k]/starts[k] index the pieces."""

    bucket_lens: list[int]
    docs: list[np.ndarray]       # global document index of each piece (int64)
    starts: list[np.ndarray]     # token offset of each piece inside its document (int64)
    dropped_tokens: int          # tails shorter than the min bucket

    def pieces(self, k: int) -> int:
        return len(self.docs[k])

    def tokens(self, k: int) -> int:
        return self.pieces(k) * self.bucket_lens[k]


def check_power_of_two(name: str, value: int) -> int:
    if value <= 0 or value & (value - 1):
        raise DataError(f"{name}={value} must be a power of two")
    return value.bit_length() - 1


def decompose(lengths: np.ndarray, min_len: int, max_len: int, seed: int) -> Decomposition:
    """Binary decomposition of every document length into buckets min_len..max_len (powers of two)."""
    lo = check_power_of_two("data.dd_min_len", min_len)
    hi = check_power_of_two("data.dd_max_len", max_len)
    if lo > hi:
        raise DataError(f"data.dd_min_len={min_len} is larger than data.dd_max_len={max_len}")
    lengths = np.asarray(lengths, dtype=np.int64)
    n_buckets = hi - lo + 1
    docs: list[list[np.ndarray]] = [[] for _ in range(n_buckets)]
    starts: list[list[np.ndarray]] = [[] for _ in range(n_buckets)]
    top = int(lengths.max()).bit_length() if len(lengths) else 0
    offset = np.zeros_like(lengths)
    doc_index = np.arange(len(lengths), dtype=np.int64)
    rng = np.random.default_rng([seed, 0xDD])
    for bit in range(top - 1, lo - 1, -1):
        has = ((lengths >> bit) & 1).astype(bool)
        d, s = doc_index[has], offset[has]
        offset += has.astype(np.int64) << bit
        if bit <= hi:
            docs[bit - lo].append(d)
            starts[bit - lo].append(s)
            continue
        # oversize piece of 2^bit tokens: draw its bucket uniformly, cut it into equal pieces
        draw = rng.integers(lo, hi + 1, size=len(d))
        for b in range(lo, hi + 1):
            sel = draw == b
            if not sel.any():
                continue
            count = 1 << (bit - b)
            sub = np.arange(count, dtype=np.int64) << b
            docs[b - lo].append(np.repeat(d[sel], count))
            starts[b - lo].append((s[sel][:, None] + sub[None, :]).reshape(-1))
    dropped = int((lengths - offset).sum())
    cat = [np.concatenate(x) if x else np.empty(0, np.int64) for x in docs]
    cst = [np.concatenate(x) if x else np.empty(0, np.int64) for x in starts]
    return Decomposition([1 << b for b in range(lo, hi + 1)], cat, cst, dropped)
