"""The streaming shard loader: exact resume, any number of workers and data-parallel ranks.

`ShardLoader.next_batch()` returns this data-parallel rank's rows of the next global step.
Steps are produced by `num_workers` processes (torch DataLoader over an IterableDataset):
worker w of W materialises steps s ≡ w (mod W) counted from the resume point, and DataLoader
hands results back round-robin, so batches arrive in step order whatever W is. The main
process walks the same plan (data/plans.py) to keep the state of what it has *returned* —
prefetched batches are not counted — so `state_dict()` after n batches resumes at batch n+1
exactly, with any num_workers and any data-parallel size (the state is global).
"""
from __future__ import annotations

import sys

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data.batch import Batch
from data.corpus import ShardCorpus
from data.curriculum import SeqLenWarmup
from data.decompose import decompose
from data.errors import DataError
from data.layout import ConcatStream
from data.plans import ConcatPlan, DDPlan


class _Steps(IterableDataset):
    """Yields (rows, new corrupt-sample messages) for the steps this worker owns."""

    def __init__(self, plan, state: dict, dp_rank: int, corpus: ShardCorpus):
        self.plan, self.state, self.dp_rank, self.corpus = plan, state, dp_rank, corpus

    def __iter__(self):
        info = get_worker_info()
        w, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        state, index = dict(self.state), 0
        while True:
            spec = self.plan.spec(state)
            if index % n_workers == w:
                seen = len(self.corpus.problems)
                rows = np.stack(self.plan.materialize(spec, self.dp_rank))   # one array: one shm segment
                yield rows, self.corpus.problems[seen:]
            state = self.plan.advance(state, spec)
            index += 1


class PlanLoader:
    """Batches of a step plan, made by `num_workers` processes; the state is the plan's (global)."""

    source = "plan"

    def __init__(self, plan, corpus, dp_rank: int, seed: int, num_workers: int, packing: str, log=None):
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.plan, self.corpus, self.dp_rank = plan, corpus, dp_rank
        self.seed, self.num_workers, self.packing = seed, num_workers, packing
        self.state = self.plan.initial_state()
        self.skipped: dict[str, int] = {}         # corrupt-data events → documents skipped
        self._note(self.corpus.problems)
        self._iter = None
        self._loader = None


    @property
    def vocab_size(self) -> int:
        return self.corpus.vocab_size

    def _start(self) -> None:
        dataset = _Steps(self.plan, self.state, self.dp_rank, self.corpus)
        if self.num_workers == 0:
            self._iter = iter(dataset)
            return
        self._loader = DataLoader(dataset, batch_size=None, num_workers=self.num_workers, prefetch_factor=4,
                                  multiprocessing_context="fork")
        self._iter = iter(self._loader)

    def next_batch(self) -> Batch:
        if self._iter is None:
            self._start()
        rows, problems = next(self._iter)
        self._note(problems)
        spec = self.plan.spec(self.state)
        before, self.state = self.state, self.plan.advance(self.state, spec)
        for msg in self.plan.epoch_events(before, self.state):
            self.log(msg)                   # a corpus (or a mixture's source) ran dry: its next epoch starts
        rows = torch.as_tensor(rows)
        return Batch(rows[0], rows[1], rows[2], rows[3].int())

    def _note(self, problems) -> None:
        """Count and log corrupt data met at start or by any worker (each event once, in this process)."""
        for msg, lost in problems:
            if msg not in self.skipped:
                self.skipped[msg] = int(lost)
                self.log(f"warning: skipping corrupt data: {msg} ({self.skipped_documents} documents "
                         "skipped so far)")

    @property
    def skipped_documents(self) -> int:
        return sum(self.skipped.values())

    def __iter__(self):
        while True:
            yield self.next_batch()

    def close(self) -> None:
        """Stop the worker processes (they are also stopped when the loader is garbage-collected)."""
        self._iter = self._loader = None

    def state_dict(self) -> dict:
        return {"source": self.source, "packing": self.packing, "seed": self.seed, **self.state,
                "skipped_corrupt": self.skipped_documents, "skipped_events": dict(self.skipped)}

    def load_state_dict(self, state: dict) -> None:
        for key, want in (("source", self.source), ("packing", self.packing), ("seed", self.seed)):
            if state.get(key) != want:
                raise DataError(f"checkpoint's data state has {key}={state.get(key)!r} but this run uses "
                                 f"{want!r}; resume with the same data settings, or train in a new run directory "
                                 "(--train.run_dir=runs/NEW)")
        fresh = self.plan.initial_state()
        self.state = {k: state[k] for k in fresh}
        # corrupt-data events seen before the checkpoint keep counting (each event once)
        self.skipped = {**{str(k): int(v) for k, v in state.get("skipped_events", {}).items()}, **self.skipped}
        self.close()


class ShardLoader(PlanLoader):
    """Batches from a `python -m data.prepare` directory (data.source = "shards"), or from another
    document corpus with the same interface (`corpus=`, e.g. data/megatron.py's, with `source=`)."""

    def __init__(self, path: str, seq_len: int, batch_size: int, dp_rank: int = 0, dp_size: int = 1,
                 seed: int = 0, num_workers: int = 0, skip_corrupt: bool = False, packing: str = "concat",
                 warmup: SeqLenWarmup | None = None, dd_min_len: int = 64, dd_max_len: int = 0,
                 dd_order: str = "uniform", log=None, corpus=None, source: str = "shards"):
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} outside 0..{dp_size - 1}")
        self.source, self.dp_size = source, dp_size
        if packing == "dd":
            if warmup is not None:
                raise DataError("data.curriculum (sequence-length warmup) and data.packing='dd' do not combine; "
                                 "Dataset Decomposition is its own length curriculum (data.dd_order)")
            corpus = corpus or ShardCorpus(path, skip_corrupt)
            max_len = dd_max_len or seq_len
            dec = decompose(np.concatenate(corpus.lengths), dd_min_len, max_len, seed)
            corpus.cache_shards = len(dec.bucket_lens) + 2   # buckets walk the shards at their own pace
            plan = DDPlan(corpus, dec, seed, batch_size, seq_len, dp_size, dd_order)
        elif packing == "concat":
            corpus = corpus or ShardCorpus(path, skip_corrupt, cache_shards=2)   # the stream moves shard by shard
            length_at = warmup.length if warmup is not None else (lambda t: seq_len)
            plan = ConcatPlan(ConcatStream(corpus, seed), batch_size, dp_size, length_at)
        else:
            raise DataError(f"data.packing must be concat or dd; got {packing!r}")
        super().__init__(plan, corpus, dp_rank, seed, num_workers, packing, log)
