"""Step plans: which rows every step takes, as a pure function of the loader state.

A plan turns a state (a few integers, global, independent of the data-parallel size and of the
number of loader workers) into the spec of the next step and the state after it. Every loader
worker and the main process walk the same plan: the workers materialise the steps they own,
the main process only tracks the state for checkpoints. The global batch of a step has G rows;
data-parallel rank r materialises rows [r·G/dp, (r+1)·G/dp).

- ConcatPlan: state (offset, step). Step t takes G = dp·batch_size rows of length L(t) (fixed,
  or the sequence-length warmup), row i covering stream[offset + i·L : offset + i·L + L + 1).
- DDPlan: state (cycle, consumed pieces per bucket, step in cycle, step). Step t draws a bucket
  k with P ∝ remaining batches × odds, and takes the next G_k = dp·batch_size·seq_len / 2^k
  pieces of bucket k in the cycle's order (shards in a permutation, pieces shuffled within a
  shard, so reading stays shard-local). Tokens per step are constant.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from data.batch import IGNORE_INDEX
from data.corpus import ShardCorpus
from data.curriculum import choose_bucket, dd_weights
from data.decompose import Decomposition
from data.errors import DataError
from data.layout import ConcatStream

Rows = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]   # tokens, labels, positions, doc_ids


def epoch_messages(name: str, epoch_tokens: int, before: int, after: int) -> list[str]:
    old, new = before // epoch_tokens, after // epoch_tokens
    return [f"data: {name} ran dry after {epoch_tokens:,} tokens (epoch {old}); starting epoch {new}, "
            "reshuffled"] if new > old else []


class ConcatPlan:
    kind = "concat"

    def __init__(self, stream: ConcatStream, batch_size: int, dp_size: int, length_at: Callable[[int], int]):
        self.stream, self.batch_size, self.dp_size, self.length_at = stream, batch_size, dp_size, length_at

    @staticmethod
    def initial_state() -> dict:
        return {"offset": 0, "step": 0}

    def spec(self, state: dict) -> tuple:
        return (int(state["offset"]), self.length_at(int(state["step"]) + 1), self.batch_size * self.dp_size)

    def advance(self, state: dict, spec: tuple) -> dict:
        offset, length, rows = spec
        return {"offset": offset + rows * length, "step": int(state["step"]) + 1}

    def epoch_events(self, before: dict, after: dict) -> list[str]:
        """The line logged when the corpus runs dry and its next (reshuffled) epoch starts."""
        return epoch_messages(f"the corpus {self.stream.corpus.directory}", self.stream.epoch_tokens,
                              int(before["offset"]), int(after["offset"]))

    def materialize(self, spec: tuple, dp_rank: int) -> Rows:
        offset, length, _ = spec
        b = self.batch_size
        start = offset + dp_rank * b * length
        toks, pos, key, valid = self.stream.read(start, b * length + 1)
        labels = toks[1:].copy()
        labels[(key[1:] != key[:-1]) | ~valid[1:] | ~valid[:-1]] = IGNORE_INDEX
        toks, pos, key = toks[:-1], pos[:-1], key[:-1]
        # document index inside each row: count key changes from the row's first token
        rows_key = key.reshape(b, length)
        change = np.zeros((b, length), dtype=np.int32)
        change[:, 1:] = rows_key[:, 1:] != rows_key[:, :-1]
        doc_ids = np.cumsum(change, axis=1, dtype=np.int32)
        return (toks.reshape(b, length), labels.reshape(b, length), pos.reshape(b, length), doc_ids)


class DDPlan:
    kind = "dd"

    def __init__(self, corpus: ShardCorpus, decomposition: Decomposition, seed: int, batch_size: int,
                 seq_len: int, dp_size: int, order: str):
        self.corpus, self.dec, self.seed = corpus, decomposition, seed
        self.batch_size, self.dp_size = batch_size, dp_size
        tokens_per_rank = batch_size * seq_len
        for length in decomposition.bucket_lens:
            if tokens_per_rank % length:
                raise DataError(f"data.batch_size·data.seq_len = {tokens_per_rank} is not a multiple of the "
                                 f"bucket length {length}; lower data.dd_max_len")
        self.rows_per_rank = [tokens_per_rank // length for length in decomposition.bucket_lens]
        self.rows_global = [r * dp_size for r in self.rows_per_rank]
        self.weights = dd_weights(order, len(decomposition.bucket_lens))
        self.pieces = np.asarray([decomposition.pieces(k) for k in range(len(self.rows_global))], dtype=np.int64)
        if all(p < g for p, g in zip(self.pieces, self.rows_global)):
            raise DataError("no Dataset Decomposition bucket has enough pieces for one step; use more data or "
                             "lower data.batch_size / data.dd_min_len")
        self.piece_shard, self.piece_local = [], []
        for k in range(len(self.rows_global)):
            s, i = corpus.locate(decomposition.docs[k])
            self.piece_shard.append(s)
            self.piece_local.append(i)
        self._orders: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def initial_state(self) -> dict:
        return {"cycle": 0, "consumed": [0] * len(self.rows_global), "step_in_cycle": 0, "step": 0}

    def _remaining(self, consumed: list[int]) -> np.ndarray:
        return (self.pieces - np.asarray(consumed, dtype=np.int64)) // np.asarray(self.rows_global)

    def spec(self, state: dict) -> tuple:
        cycle, consumed, in_cycle = int(state["cycle"]), list(state["consumed"]), int(state["step_in_cycle"])
        remaining = np.maximum(self._remaining(consumed), 0)
        if not remaining.any():
            cycle, consumed, in_cycle = cycle + 1, [0] * len(consumed), 0
            remaining = self._remaining(consumed)
        u = np.random.default_rng([self.seed, cycle, in_cycle, 0xB0C]).random()
        k = choose_bucket(remaining, self.weights, u)
        return (cycle, k, int(consumed[k]), self.rows_global[k], consumed, in_cycle)

    def advance(self, state: dict, spec: tuple) -> dict:
        cycle, k, start, rows, consumed, in_cycle = spec
        consumed = list(consumed)
        consumed[k] = start + rows
        return {"cycle": cycle, "consumed": consumed, "step_in_cycle": in_cycle + 1, "step": int(state["step"]) + 1}

    def epoch_events(self, before: dict, after: dict) -> list[str]:
        """The line logged when every bucket has run dry and the next (reshuffled) cycle starts."""
        if int(after["cycle"]) <= int(before["cycle"]):
            return []
        return [f"data: the corpus {self.corpus.directory} ran dry (Dataset Decomposition cycle "
                f"{int(before['cycle'])}); starting cycle {int(after['cycle'])}, reshuffled"]

    def order(self, cycle: int, k: int) -> np.ndarray:
        """Piece order of bucket k in a cycle: shards permuted, pieces shuffled within each shard."""
        if (cycle, k) not in self._orders:
            rank = np.random.default_rng([self.seed, cycle, 0x5A]).permutation(self.corpus.n_shards)
            noise = np.random.default_rng([self.seed, cycle, k, 0x0D]).random(self.dec.pieces(k))
            self._orders[(cycle, k)] = np.lexsort((noise, rank[self.piece_shard[k]]))
            while len(self._orders) > 2 * len(self.rows_global):
                self._orders.popitem(last=False)
        return self._orders[(cycle, k)]

    def materialize(self, spec: tuple, dp_rank: int) -> Rows:
        cycle, k, start, _, _, _ = spec
        length, b = self.dec.bucket_lens[k], self.rows_per_rank[k]
        picks = self.order(cycle, k)[start + dp_rank * b: start + (dp_rank + 1) * b]
        toks = np.zeros((b, length), dtype=np.int64)
        labels = np.full((b, length), IGNORE_INDEX, dtype=np.int64)
        for row, p in enumerate(picks):
            doc = self.corpus.doc(int(self.piece_shard[k][p]), int(self.piece_local[k][p]))
            if doc is None:
                continue
            st = int(self.dec.starts[k][p])
            toks[row] = doc[st:st + length]
            nxt = doc[st + 1:st + length + 1]          # the piece's last label is the document's next token
            labels[row, :len(nxt)] = nxt
        positions = np.broadcast_to(np.arange(length, dtype=np.int64), (b, length)).copy()
        return toks, labels, positions, np.zeros((b, length), dtype=np.int32)
