"""Loaders: turn a data config into a stream of Batches for one data-parallel rank.

The global batch of a step is dp_size·batch_size consecutive packed rows; rank r keeps rows
[r·B, (r+1)·B). State is global (where the stream stands), so a checkpoint resumes exactly
with any number of data-parallel ranks.
"""
from __future__ import annotations

from data.batch import Batch
from data.packing import ConcatChunkPacker
from data.synthetic import synthetic_document
from data.tokenizer import ByteTokenizer


class SyntheticLoader:
    """Packed rows of the embedded synthetic corpus (byte tokenizer)."""

    def __init__(self, seq_len: int, batch_size: int, dp_rank: int = 0, dp_size: int = 1, seed: int = 0,
                 min_chars: int = 400, max_chars: int = 6000):
        self.tokenizer = ByteTokenizer()
        self.batch_size, self.dp_rank, self.dp_size = batch_size, dp_rank, dp_size
        self.seed = seed
        self.packer = ConcatChunkPacker(
            lambda i: self.tokenizer.encode_document(synthetic_document(seed, i, min_chars, max_chars)),
            seq_len,
        )
        self.steps = 0

    @property
    def seq_len(self) -> int:
        return self.packer.seq_len

    def next_batch(self) -> Batch:
        glob = self.packer.next_batch(self.batch_size * self.dp_size)
        self.steps += 1
        b = self.batch_size
        return glob.rows(self.dp_rank * b, (self.dp_rank + 1) * b)

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {"source": "synthetic", "seed": self.seed, "steps": self.steps, **self.packer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("source", "synthetic") != "synthetic":
            raise ValueError(f"checkpoint's data state is for source {state.get('source')!r}, not 'synthetic'")
        self.steps = int(state["steps"])
        self.packer.load_state_dict(state)


def build_loader(data_cfg, dp_rank: int = 0, dp_size: int = 1):
    """The loader the data config asks for (`data.source`)."""
    if data_cfg.source == "synthetic":
        return SyntheticLoader(data_cfg.seq_len, data_cfg.batch_size, dp_rank, dp_size, data_cfg.seed,
                               data_cfg.min_doc_chars, data_cfg.max_doc_chars)
    raise NotImplementedError(f"data.source={data_cfg.source!r} is not implemented yet; use 'synthetic'")
