"""The concat-and-chunk token stream over a shard corpus: a pure function of (seed, epoch, offset).

Epoch e lays the documents end to end: shards in a permutation drawn from (seed, e), and the
documents of each shard in a permutation drawn from (seed, e, shard). Shards are the unit of
I/O, so reading the stream in order touches one shard at a time (webdataset's shard-then-sample
shuffle), yet the layout needs only lengths.npy. Epochs follow each other without a gap: the
stream is infinite, offset x lies in epoch x // N at x % N (N = tokens per epoch), and
`read(x, n)` returns stream[x : x+n] with each token's position inside its document, a key
that is unique per (epoch, document) and whether the token is valid (False for a document
found corrupt mid-run under skip_corrupt).

Optional per-document counts (a mixture's length filters and long-document upsampling, see
data/mixture.py) repeat a document `count` times in every epoch, or drop it at 0; the copies
are shuffled like distinct documents.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from data.corpus import ShardCorpus
from data.errors import DataError


class EpochLayout:
    """Document order and start offsets of one epoch."""

    def __init__(self, lengths: list[np.ndarray], seed: int, epoch: int, counts: list[np.ndarray] | None = None):
        rng = np.random.default_rng([seed, epoch, 0x5EED])
        order = rng.permutation(len(lengths))
        shards, locals_, lens = [], [], []
        for s in order:
            items = np.arange(len(lengths[s])) if counts is None else np.repeat(np.arange(len(lengths[s])), counts[s])
            perm = items[np.random.default_rng([seed, epoch, int(s), 0xD0C]).permutation(len(items))]
            shards.append(np.full(len(perm), s, dtype=np.int64))
            locals_.append(perm.astype(np.int64))
            lens.append(lengths[s][perm])
        self.shard = np.concatenate(shards)
        self.local = np.concatenate(locals_)
        self.length = np.concatenate(lens)
        self.start = np.concatenate([[0], np.cumsum(self.length)]).astype(np.int64)
        self.total = int(self.start[-1])

    def find(self, offset: int) -> int:
        """Index (in epoch order) of the non-empty document holding epoch offset `offset`."""
        return int(np.searchsorted(self.start, offset, side="right")) - 1


class ConcatStream:
    def __init__(self, corpus: ShardCorpus, seed: int, counts: list[np.ndarray] | None = None):
        self.corpus, self.seed, self.counts = corpus, seed, counts
        weights = corpus.lengths if counts is None else [x * c for x, c in zip(corpus.lengths, counts)]
        self.epoch_tokens = int(sum(int(x.sum()) for x in weights))
        if self.epoch_tokens == 0:
            raise DataError(f"{corpus.directory} holds no readable tokens")
        self.n_docs = int(sum(len(x) for x in corpus.lengths) if counts is None else sum(int(c.sum()) for c in counts))
        self._layouts: OrderedDict[int, EpochLayout] = OrderedDict()

    def layout(self, epoch: int) -> EpochLayout:
        if epoch not in self._layouts:
            self._layouts[epoch] = EpochLayout(self.corpus.lengths, self.seed, epoch, self.counts)
            while len(self._layouts) > 2:
                self._layouts.popitem(last=False)
        return self._layouts[epoch]

    def read(self, offset: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """tokens, positions, document keys (int64) and valid flags of stream[offset : offset + n]."""
        toks = np.empty(n, dtype=np.int64)
        pos = np.empty(n, dtype=np.int64)
        key = np.empty(n, dtype=np.int64)
        valid = np.ones(n, dtype=bool)
        filled = 0
        epoch, x = divmod(offset, self.epoch_tokens)
        lay = self.layout(epoch)
        i = lay.find(x)
        off = x - int(lay.start[i])
        while filled < n:
            length = int(lay.length[i])
            if length:
                take = min(length - off, n - filled)
                doc = self.corpus.doc(int(lay.shard[i]), int(lay.local[i]))
                sl = slice(filled, filled + take)
                if doc is None:
                    toks[sl], valid[sl] = 0, False
                else:
                    toks[sl] = doc[off:off + take]
                pos[sl] = np.arange(off, off + take)
                key[sl] = epoch * self.n_docs + i
                filled += take
            off = 0
            i += 1
            if i == len(lay.length):
                epoch, i = epoch + 1, 0
                lay = self.layout(epoch)
        return toks, pos, key, valid
