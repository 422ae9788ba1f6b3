"""Loaders: turn a data config into a stream of Batches for one data-parallel rank.

The global batch of a step is dp_size·batch_size consecutive packed rows; rank r keeps rows
[r·B, (r+1)·B). State is global (where the stream stands), so a checkpoint resumes exactly
with any number of data-parallel ranks.

- data.source = "synthetic": the embedded corpus, generated on the fly (SyntheticLoader);
- data.source = "shards":    a `python -m data.prepare` directory (data/stream.py ShardLoader),
  with data.packing = concat | dd and the loader workers of data.num_workers;
- data.source = "megatron":  Megatron .bin/.idx prefixes through megatron-core (data/megatron.py),
  the same loader over another document corpus;
- data.source = "mixture":   the weighted [[data.sources]] of data/mixture.py.
Sequence-length warmup (data.curriculum) applies to both; its state is the step counter.
Every loader implements data/protocol.py's Loader; so does data/row_streams.py's (lengthgen.tbptt).
"""
from __future__ import annotations

from collections.abc import Callable

from data.batch import Batch
from data.curriculum import SeqLenWarmup
from data.errors import DataError
from data.packing import ConcatChunkPacker
from data.synthetic import synthetic_document
from data.tokenizer import ByteTokenizer


class SyntheticLoader:
    """Packed rows of the embedded synthetic corpus (byte tokenizer).

    Subclasses (data/tasks/corpus.py's SizedLoader) set another `packer` and `corpus` name; the
    batching, the data-parallel split, the curriculum and the checkpoint state are this class's."""
    corpus = "classic"

    def __init__(self, seq_len: int, batch_size: int, dp_rank: int = 0, dp_size: int = 1, seed: int = 0,
                 min_chars: int = 400, max_chars: int = 6000, length_at: Callable[[int], int] | None = None):
        self._setup(batch_size, dp_rank, dp_size, seed, length_at)
        self.packer = ConcatChunkPacker(
            lambda i: self.tokenizer.encode_document(synthetic_document(seed, i, min_chars, max_chars)),
            seq_len,
        )

    def _setup(self, batch_size: int, dp_rank: int, dp_size: int, seed: int,
               length_at: Callable[[int], int] | None) -> None:
        self.tokenizer = ByteTokenizer()
        self.batch_size, self.dp_rank, self.dp_size = batch_size, dp_rank, dp_size
        self.seed = seed
        self.length_at = length_at
        self.steps = 0

    @property
    def seq_len(self) -> int:
        return self.packer.seq_len

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    skipped_documents = None        # generated text: nothing to skip

    def next_batch(self) -> Batch:
        if self.length_at is not None:         # warmup: step t (1-based) trains at length L(t)
            self.packer.seq_len = self.length_at(self.steps + 1)
        glob = self.packer.next_batch(self.batch_size * self.dp_size)
        self.steps += 1
        b = self.batch_size
        return glob.rows(self.dp_rank * b, (self.dp_rank + 1) * b)

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        extra = {} if self.corpus == "classic" else {"corpus": self.corpus}
        return {"source": "synthetic", **extra, "seed": self.seed, "steps": self.steps, **self.packer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("source", "synthetic") != "synthetic":
            raise DataError(f"checkpoint's data state is for source {state.get('source')!r}, not 'synthetic'")
        if state.get("corpus", "classic") != self.corpus:
            raise DataError(f"checkpoint's data state is for data.corpus={state.get('corpus', 'classic')!r}, not "
                            f"{self.corpus!r}; resume with the same corpus")
        self.steps = int(state["steps"])
        self.packer.load_state_dict(state)


def build_warmup(data_cfg) -> SeqLenWarmup | None:
    """The sequence-length warmup data.curriculum asks for (None for 'none')."""
    if data_cfg.curriculum == "none":
        return None
    return SeqLenWarmup(data_cfg.curriculum, data_cfg.curriculum_min_len, data_cfg.seq_len,
                        data_cfg.curriculum_steps, data_cfg.curriculum_root_degree, data_cfg.curriculum_len_step,
                        tuple(data_cfg.curriculum_lens), tuple(data_cfg.curriculum_max_steps))


def build_loader(data_cfg, dp_rank: int = 0, dp_size: int = 1):
    """The loader the data config asks for (`data.source`)."""
    warmup = build_warmup(data_cfg)
    if getattr(data_cfg, "sources", None) and data_cfg.source != "mixture":
        raise DataError(f"[[data.sources]] tables are set but data.source={data_cfg.source!r}; set "
                        "data.source='mixture' to train on them")
    if data_cfg.source == "synthetic":
        if data_cfg.packing != "concat":
            raise DataError("data.packing='dd' needs data.source='shards'; write the synthetic corpus as shards "
                            "with `python -m data.prepare --synthetic N --output DIR`")
        if getattr(data_cfg, "corpus", "classic") == "sized":     # the context-sized corpus with task documents
            from data.tasks.corpus import SizedLoader

            return SizedLoader(data_cfg, dp_rank, dp_size, warmup.length if warmup is not None else None)
        return SyntheticLoader(data_cfg.seq_len, data_cfg.batch_size, dp_rank, dp_size, data_cfg.seed,
                               data_cfg.min_doc_chars, data_cfg.max_doc_chars,
                               warmup.length if warmup is not None else None)
    if data_cfg.source == "shards":
        from data.stream import ShardLoader

        if not data_cfg.path:
            raise DataError("data.source='shards' needs data.path=DIR (a `python -m data.prepare` output)")
        return ShardLoader(data_cfg.path, data_cfg.seq_len, data_cfg.batch_size, dp_rank, dp_size,
                           data_cfg.seed, data_cfg.num_workers, data_cfg.skip_corrupt, data_cfg.packing, warmup,
                           data_cfg.dd_min_len, data_cfg.dd_max_len, data_cfg.dd_order)
    if data_cfg.source == "megatron":
        from data.megatron import MegatronCorpus
        from data.stream import ShardLoader

        if not data_cfg.path:
            raise DataError("data.source='megatron' needs data.path=PREFIX (PREFIX.bin + PREFIX.idx) or a "
                            "directory of prefixes")
        corpus = MegatronCorpus(data_cfg.path, skip_corrupt=data_cfg.skip_corrupt)
        return ShardLoader(data_cfg.path, data_cfg.seq_len, data_cfg.batch_size, dp_rank, dp_size,
                           data_cfg.seed, data_cfg.num_workers, data_cfg.skip_corrupt, data_cfg.packing, warmup,
                           data_cfg.dd_min_len, data_cfg.dd_max_len, data_cfg.dd_order, corpus=corpus,
                           source="megatron")
    if data_cfg.source == "mixture":
        from data.mixture import build_mixture_loader

        return build_mixture_loader(data_cfg, dp_rank, dp_size, warmup)
    raise DataError(f"data.source={data_cfg.source!r} is not implemented; use synthetic, shards, megatron "
                    "or mixture")


def possible_lengths(data_cfg) -> list[int]:
    """Every row length the configured curriculum can produce (for per-length FLOP counts / MFU)."""
    lengths = {data_cfg.seq_len}
    warmup = build_warmup(data_cfg)
    if warmup is not None:
        last = max([data_cfg.curriculum_steps, *data_cfg.curriculum_max_steps]) + 1
        lengths |= {warmup.length(t) for t in range(1, last + 1)}
    if data_cfg.packing == "dd":
        top = data_cfg.dd_max_len or data_cfg.seq_len
        length = data_cfg.dd_min_len
        while 0 < length <= top:
            lengths.add(length)
            length *= 2
    return sorted(lengths)
