"""Weighted mixtures of document sources with per-source length filters and long-document upsampling.

    [data]
    source = "mixture"
    [[data.sources]]
    path = "data/books"   format = "shards"    weight = 0.3   long_doc_len = 8192  long_doc_rate = 3.0
    [[data.sources]]
    path = "data/web"     format = "megatron"  weight = 0.7   max_doc_len = 65536

Each source is its own concat-and-chunk stream (data/layout.py) over its corpus. Inside a source,
every document gets a number of copies per epoch: 0 outside [min_doc_len, max_doc_len], else
`long_doc_rate` (a) for documents of at least `long_doc_len` (L) tokens and `short_doc_rate` (b)
for shorter ones — Fu et al. (2024)'s per-source upsampling of long documents. A fractional rate r
gives floor(r) copies plus one more with probability r − floor(r), drawn once per (seed, source,
document), so the epoch size is fixed and the order stays a pure function of (seed, epoch, offset).

Step t (0-based) draws a source for each of its G global rows from (seed, t) with P ∝ weight; the
k-th row of source s in the step covers that source's stream from offset_s + k·L(t). The state is
the per-source offsets and the step count — global, so resume is exact for any data-parallel size
and number of workers, and offset_s is exactly the tokens source s has supplied (the realised mix).
A source that reaches the end of its epoch continues with its next, reshuffled epoch (logged).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from data.batch import IGNORE_INDEX
from data.curriculum import SeqLenWarmup
from data.errors import DataError
from data.layout import ConcatStream
from data.plans import Rows, epoch_messages
from data.stream import PlanLoader


def doc_counts(lengths: list[np.ndarray], src, seed: int, index: int) -> list[np.ndarray]:
    """Copies per epoch of every document (per block), from the source's filters and rates."""
    rng = np.random.default_rng([seed, index, 0x0B5])
    out = []
    for block in lengths:
        rate = np.where(block >= src.long_doc_len, src.long_doc_rate, src.short_doc_rate) if src.long_doc_len \
            else np.full(len(block), src.short_doc_rate)
        whole = np.floor(rate)
        counts = (whole + (rng.random(len(block)) < rate - whole)).astype(np.int64)
        keep = block >= max(src.min_doc_len, 1)
        if src.max_doc_len:
            keep &= block <= src.max_doc_len
        out.append(np.where(keep, counts, 0))
    return out


class MixturePlan:
    kind = "mixture"

    def __init__(self, streams: list[ConcatStream], names: list[str], weights: list[float], seed: int,
                 batch_size: int, dp_size: int, length_at: Callable[[int], int]):
        self.streams, self.names, self.seed = streams, names, seed
        self.batch_size, self.dp_size, self.length_at = batch_size, dp_size, length_at
        w = np.asarray(weights, dtype=np.float64)
        self.cum = np.cumsum(w) / w.sum()

    def initial_state(self) -> dict:
        return {"offsets": [0] * len(self.streams), "step": 0}

    def sources_of(self, step: int, rows: int) -> np.ndarray:
        """The source of each global row of step `step` (a pure function of seed and step)."""
        u = np.random.default_rng([self.seed, step, 0x313]).random(rows)
        return np.minimum(np.searchsorted(self.cum, u, side="right"), len(self.streams) - 1)

    def spec(self, state: dict) -> tuple:
        step = int(state["step"])
        rows = self.batch_size * self.dp_size
        return (tuple(int(x) for x in state["offsets"]), self.length_at(step + 1), self.sources_of(step, rows))

    def advance(self, state: dict, spec: tuple) -> dict:
        offsets, length, src = spec
        taken = np.bincount(src, minlength=len(self.streams))
        return {"offsets": [int(o + n * length) for o, n in zip(offsets, taken)], "step": int(state["step"]) + 1}

    def epoch_events(self, before: dict, after: dict) -> list[str]:
        return [m for s, name in enumerate(self.names)
                for m in epoch_messages(f"source {name!r}", self.streams[s].epoch_tokens,
                                        int(before["offsets"][s]), int(after["offsets"][s]))]

    def materialize(self, spec: tuple, dp_rank: int) -> Rows:
        offsets, length, src = spec
        nth = np.zeros(len(src), dtype=np.int64)          # index of each row among its source's rows
        for s in range(len(self.streams)):
            mine = np.flatnonzero(src == s)
            nth[mine] = np.arange(len(mine))
        b = self.batch_size
        out = [np.empty((b, length), dtype=np.int64) for _ in range(3)] + [np.empty((b, length), dtype=np.int32)]
        for row, g in enumerate(range(dp_rank * b, (dp_rank + 1) * b)):
            s = int(src[g])
            toks, pos, key, valid = self.streams[s].read(offsets[s] + int(nth[g]) * length, length + 1)
            labels = toks[1:].copy()
            labels[(key[1:] != key[:-1]) | ~valid[1:] | ~valid[:-1]] = IGNORE_INDEX
            out[0][row], out[1][row], out[2][row] = toks[:-1], labels, pos[:-1]
            out[3][row, 0] = 0
            out[3][row, 1:] = np.cumsum(key[1:length] != key[:length - 1])
        return tuple(out)


def source_name(src, i: int) -> str:
    return src.name or Path(src.path.rstrip("/")).name or f"source{i}"


def open_corpus(src, skip_corrupt: bool):
    if not src.path:
        raise DataError("a [[data.sources]] table has no path; give the shard directory or Megatron prefix")
    if src.format == "megatron":
        from data.megatron import MegatronCorpus

        return MegatronCorpus(src.path, skip_corrupt=skip_corrupt)
    from data.corpus import ShardCorpus

    return ShardCorpus(src.path, skip_corrupt, cache_shards=2)


def tokenizer_of(corpus) -> str | None:
    manifest = getattr(corpus, "manifest", None)
    if manifest is not None:
        return manifest.tokenizer
    meta = getattr(corpus, "meta", None)
    return meta["tokenizer"] if meta else None


def check_sources(sources, packing: str) -> None:
    if not sources:
        raise DataError("data.source='mixture' needs [[data.sources]] tables (path, format, weight) in the config")
    if packing != "concat":
        raise DataError("data.source='mixture' packs with data.packing='concat'; Dataset Decomposition reads "
                        "one source (data.source=shards|megatron)")
    for i, src in enumerate(sources):
        name = source_name(src, i)
        if src.weight < 0:
            raise DataError(f"data.sources[{i}] ({name}) has weight {src.weight}; weights must be >= 0")
        if src.long_doc_rate < 0 or src.short_doc_rate < 0:
            raise DataError(f"data.sources[{i}] ({name}) has a negative long_doc_rate/short_doc_rate; "
                            "rates are copies per epoch, >= 0")
        if min(src.min_doc_len, src.max_doc_len, src.long_doc_len) < 0:
            raise DataError(f"data.sources[{i}] ({name}): document lengths must be >= 0")
        if src.max_doc_len and src.max_doc_len < src.min_doc_len:
            raise DataError(f"data.sources[{i}] ({name}): max_doc_len {src.max_doc_len} < min_doc_len "
                            f"{src.min_doc_len}")
    if sum(src.weight for src in sources) <= 0:
        raise DataError("every [[data.sources]] weight is 0; give at least one source a positive weight")


class MixtureLoader(PlanLoader):
    """Batches of a weighted mixture (data.source = "mixture")."""

    source = "mixture"

    def __init__(self, sources, seq_len: int, batch_size: int, dp_rank: int = 0, dp_size: int = 1,
                 seed: int = 0, num_workers: int = 0, skip_corrupt: bool = False,
                 warmup: SeqLenWarmup | None = None, packing: str = "concat", log=None):
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} outside 0..{dp_size - 1}")
        check_sources(sources, packing)
        self.sources, self.dp_size = list(sources), dp_size
        self.names = [source_name(src, i) for i, src in enumerate(sources)]
        if len(set(self.names)) != len(self.names):
            raise DataError(f"[[data.sources]] names repeat ({', '.join(self.names)}); set a distinct name= each")
        self.corpora = [open_corpus(src, skip_corrupt) for src in sources]
        self._check_tokenizers()
        shared = [p for c in self.corpora for p in c.problems]
        for c in self.corpora:                  # one list, so a worker's new events arrive in order
            c.problems = shared
        self.counts = [doc_counts(c.lengths, src, seed, i) for i, (c, src) in enumerate(zip(self.corpora, sources))]
        for i, (name, counts) in enumerate(zip(self.names, self.counts)):
            if sources[i].weight > 0 and sum(int(c.sum()) for c in counts) == 0:
                raise DataError(f"data.sources[{i}] ({name}) keeps no documents after min_doc_len/max_doc_len "
                                "and the rates; loosen them or set weight = 0")
        streams = [ConcatStream(c, seed, n) if src.weight > 0 else None
                   for c, n, src in zip(self.corpora, self.counts, sources)]
        streams = [s if s is not None else _Unused(c) for s, c in zip(streams, self.corpora)]
        length_at = warmup.length if warmup is not None else (lambda t: seq_len)
        plan = MixturePlan(streams, self.names, [src.weight for src in sources], seed, batch_size, dp_size,
                           length_at)
        super().__init__(plan, self.corpora[0], dp_rank, seed, num_workers, packing, log)

    def _check_tokenizers(self) -> None:
        known = [(n, t) for n, t in zip(self.names, map(tokenizer_of, self.corpora)) if t is not None]
        for n, t in known[1:]:
            if t != known[0][1]:
                raise DataError(f"mixture sources use different tokenizers: {known[0][0]} has {known[0][1]}, "
                                f"{n} has {t}; prepare them with one tokenizer")

    @property
    def vocab_size(self) -> int:
        return max(c.vocab_size for c in self.corpora)

    def tokens_per_source(self) -> dict[str, int]:
        """Tokens each source has supplied so far, over all ranks (the realised mix)."""
        return dict(zip(self.names, (int(x) for x in self.state["offsets"])))

    def tb_scalars(self) -> dict[str, float]:
        tokens = self.tokens_per_source()
        total = max(1, sum(tokens.values()))
        return {**{f"data/tokens/{n}": float(v) for n, v in tokens.items()},
                **{f"data/share/{n}": v / total for n, v in tokens.items()}}

    def describe(self) -> list[str]:
        from data.mixture_report import describe_mixture

        return describe_mixture(self)


class _Unused:
    """Stands in for the stream of a weight-0 source (never sampled)."""

    def __init__(self, corpus):
        self.corpus, self.epoch_tokens = corpus, 1

    def read(self, offset: int, n: int):
        raise AssertionError("a weight-0 source was sampled")


def build_mixture_loader(data_cfg, dp_rank: int, dp_size: int, warmup: SeqLenWarmup | None) -> MixtureLoader:
    return MixtureLoader(data_cfg.sources, data_cfg.seq_len, data_cfg.batch_size, dp_rank, dp_size, data_cfg.seed,
                         data_cfg.num_workers, data_cfg.skip_corrupt, warmup, data_cfg.packing)
