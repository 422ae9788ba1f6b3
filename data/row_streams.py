"""Row-stream loader for truncated BPTT: row r of step k+1 is the continuation of row r of step k.

The ordinary packer cuts *one* token stream into consecutive rows, so consecutive steps see
unrelated text in a given row and a carried recurrent state would be meaningless. Here each
global row (dp_size · batch_size of them) is its own packed stream over a disjoint,
interleaved subset of the synthetic corpus (stream r reads documents r, r + n, r + 2n, ...),
so the final state of a row is the correct initial state of the same row at the next step
(positions[:, 0] > 0 says the row continues a document; 0 says a new one starts there).
State = each stream's (doc_index, doc_offset), global, so resume is exact for any dp size.
"""
from __future__ import annotations

import numpy as np
import torch

from data.batch import Batch
from data.packing import ConcatChunkPacker
from data.synthetic import synthetic_document
from data.tokenizer import ByteTokenizer


class RowStreamLoader:
    def __init__(self, seq_len: int, batch_size: int, dp_rank: int = 0, dp_size: int = 1, seed: int = 0,
                 min_chars: int = 400, max_chars: int = 6000, packer_for=None):
        """`packer_for(r, n)`: stream r's packer over documents r, r + n, ... (default: the classic
        synthetic corpus, concatenated and cut into rows)."""
        tok = ByteTokenizer()
        self.batch_size, self.dp_rank, self.dp_size, self.seed = batch_size, dp_rank, dp_size, seed
        n = batch_size * dp_size

        def classic(r: int, n: int):
            return ConcatChunkPacker(
                lambda i: tok.encode_document(synthetic_document(seed, i * n + r, min_chars, max_chars)), seq_len)

        # every rank advances every stream (cheap) so the saved state is global, like SyntheticLoader
        self.packers = [(packer_for or classic)(r, n) for r in range(n)]
        self.steps = 0

    @property
    def seq_len(self) -> int:
        return self.packers[0].seq_len

    vocab_size = ByteTokenizer.vocab_size
    skipped_documents = None        # generated text: nothing to skip

    def next_batch(self) -> Batch:
        rows = [p.next_row() for p in self.packers]
        self.steps += 1
        lo, hi = self.dp_rank * self.batch_size, (self.dp_rank + 1) * self.batch_size
        tok, lab, pos, doc = (torch.from_numpy(np.stack([r[k] for r in rows[lo:hi]])) for k in range(4))
        return Batch(tok, lab, pos, doc.to(torch.int32))

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {"source": "row_streams", "seed": self.seed, "steps": self.steps,
                "streams": [p.state_dict() for p in self.packers]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("source") != "row_streams" or len(state.get("streams", [])) != len(self.packers):
            raise ValueError("checkpoint's data state is not a row-stream state with "
                             f"{len(self.packers)} streams; resume with the same lengthgen.tbptt, batch and dp size")
        self.steps = int(state["steps"])
        for p, s in zip(self.packers, state["streams"]):
            p.load_state_dict(s)


def build_row_stream_loader(data_cfg, dp_rank: int = 0, dp_size: int = 1) -> RowStreamLoader:
    """The row-stream loader for lengthgen.tbptt, from the [data] section (the synthetic corpus, classic
    or sized: under data.corpus = "sized" each stream is a fitting packer over its share of the sized
    corpus, so a TBPTT run trains on the same task documents as the run it continues)."""
    from data.errors import DataError

    if data_cfg.source != "synthetic" or data_cfg.packing != "concat":
        raise DataError("lengthgen.tbptt needs data.source=synthetic with data.packing=concat (the row-stream loader)")
    d = data_cfg
    packer_for = None
    if d.corpus == "sized":
        from data.tasks.corpus import FittingPacker, StridedCorpus, sized_corpus

        corpus = sized_corpus(d, ByteTokenizer())
        packer_for = lambda r, n: FittingPacker(StridedCorpus(corpus, r, n), d.seq_len)  # noqa: E731
    return RowStreamLoader(d.seq_len, d.batch_size, dp_rank, dp_size, d.seed, d.min_doc_chars, d.max_doc_chars,
                           packer_for)
