"""Concat-and-chunk packing with document metadata.

Documents (each BOS ... EOS) are laid end to end as one token stream and cut into rows of T
tokens. Row r covers stream[r·T : r·T + T] and its labels stream[r·T + 1 : r·T + T + 1].
A label that belongs to a different document than its input token is -100, so no loss
crosses a boundary; doc_ids number the documents inside the row and positions count from a
document's first token (they continue when a document spills into the next row).
The packer's whole state is (document index, offset in it): resuming replays nothing.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from data.batch import IGNORE_INDEX, Batch


class ConcatChunkPacker:
    def __init__(self, get_document: Callable[[int], np.ndarray], seq_len: int):
        self.get_document = get_document
        self.seq_len = seq_len
        self.doc_index = 0
        self.doc_offset = 0
        self._cache: dict[int, np.ndarray] = {}

    def _doc(self, i: int) -> np.ndarray:
        if i not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[i] = self.get_document(i)
        return self._cache[i]

    def state_dict(self) -> dict:
        return {"doc_index": self.doc_index, "doc_offset": self.doc_offset}

    def load_state_dict(self, state: dict) -> None:
        self.doc_index, self.doc_offset = int(state["doc_index"]), int(state["doc_offset"])

    def next_row(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """tokens, labels, positions, doc_ids (each length T) of the next row; advances by T."""
        t = self.seq_len
        toks = np.empty(t + 1, dtype=np.int64)
        pos = np.empty(t + 1, dtype=np.int64)
        doc = np.empty(t + 1, dtype=np.int64)
        i, off, filled, local = self.doc_index, self.doc_offset, 0, 0
        advanced = None
        while filled < t + 1:
            d = self._doc(i)
            take = min(len(d) - off, t + 1 - filled)
            toks[filled:filled + take] = d[off:off + take]
            pos[filled:filled + take] = np.arange(off, off + take)
            doc[filled:filled + take] = local
            filled += take
            off += take
            if filled >= t and advanced is None:   # where the next row starts (stream index r·T + T)
                back = filled - t
                advanced = (i, off - back) if off - back < len(d) else (i + 1, 0)
            if off == len(d):
                i, off, local = i + 1, 0, local + 1
        self.doc_index, self.doc_offset = advanced
        labels = toks[1:].copy()
        labels[doc[1:] != doc[:-1]] = IGNORE_INDEX
        return toks[:-1], labels, pos[:-1], doc[:-1]

    def next_batch(self, rows: int) -> Batch:
        parts = [self.next_row() for _ in range(rows)]
        tok, lab, pos, doc = (np.stack([p[k] for p in parts]) for k in range(4))
        return Batch(torch.from_numpy(tok), torch.from_numpy(lab), torch.from_numpy(pos),
                     torch.from_numpy(doc.astype(np.int32)))
