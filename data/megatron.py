"""Megatron indexed datasets (.bin/.idx) as a document corpus, read and written with megatron-core.

A prefix P names `P.idx` (sequence lengths, byte pointers, document boundaries) and `P.bin`
(the token ids, back to back). megatron-core's `IndexedDataset` memory-maps both, so a rank
touches only the pages of the documents it packs: reading costs what is consumed.

`MegatronCorpus` presents one or more prefixes with the same interface as a shard directory
(data/corpus.py): per-block document lengths, `doc(block, i)`, `locate`, `vocab_size`. A block
is a run of `block_docs` consecutive documents of one prefix and plays the part of a shard in
the epoch layout (blocks in a permutation, documents permuted inside a block), so concat
packing, Dataset Decomposition, curricula, document masking and exact resume work unchanged.

The vocabulary comes from the sidecar `P.json` that `python -m data.prepare --format megatron`
writes (tokenizer, vocab size, end marker); a prefix made elsewhere has none, and its largest
token id + 1 stands in (one pass over the .bin at start). Every document read is checked for
ids ≥ vocab size.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path

import numpy as np

from data.errors import DataError

SIDECAR_FORMAT = "longweave-megatron"
INT_DTYPES = ("uint8", "int8", "int16", "uint16", "int32", "int64")


def import_indexed_dataset():
    """megatron-core's IndexedDataset, IndexedDatasetBuilder and DType (one-line error if missing)."""
    try:
        with warnings.catch_warnings():     # megatron.core warns about absent Apex / Transformer Engine
            warnings.simplefilter("ignore")
            from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder
    except ImportError as e:
        raise DataError(f"data.source='megatron' needs megatron-core ({e}); "
                        "pip install 'longweave[megatron]'") from None
    return IndexedDataset, IndexedDatasetBuilder, DType


def find_prefixes(path: str) -> list[str]:
    """The prefixes `path` names: itself (P.idx + P.bin) or every *.idx prefix in a directory (sorted)."""
    p = Path(path)
    if p.is_dir():
        prefixes = sorted(str(q.with_suffix("")) for q in p.glob("*.idx"))
        if not prefixes:
            raise DataError(f"data.path={path!r} is a directory without .idx files; give a Megatron prefix "
                            "(PATH for PATH.bin + PATH.idx) or a directory holding them")
    else:
        prefixes = [str(p)]
    for prefix in prefixes:
        idx, bin_ = Path(prefix + ".idx"), Path(prefix + ".bin")
        if not idx.is_file() and not bin_.is_file():
            raise DataError(f"Megatron prefix {prefix!r}: neither {idx.name} nor {bin_.name} exists; "
                            "check data.path (a prefix, without .bin/.idx)")
        for have, missing in ((bin_, idx), (idx, bin_)):
            if not missing.is_file():
                raise DataError(f"Megatron prefix {prefix!r}: {missing} is missing ({have.name} is there); "
                                "restore it or re-run the preprocessing")
    return prefixes


def read_sidecar(prefix: str) -> dict | None:
    path = Path(prefix + ".json")
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
        if meta.get("format") != SIDECAR_FORMAT:
            return None
        return {"tokenizer": str(meta["tokenizer"]), "vocab_size": int(meta["vocab_size"]), "eos": int(meta["eos"])}
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path} is malformed ({type(e).__name__}: {e}); re-run data.prepare or delete it") from None


def open_prefix(prefix: str):
    """megatron-core's IndexedDataset for `prefix`, after checking header, dtype and .bin size."""
    indexed_dataset, _, dtype_enum = import_indexed_dataset()
    with open(prefix + ".idx", "rb") as fh:
        head = fh.read(18)
    if len(head) < 18 or head[:9] != b"MMIDIDX\x00\x00":
        raise DataError(f"{prefix}.idx is not a Megatron index (bad header); re-run the preprocessing")
    try:
        dtype = np.dtype(dtype_enum.dtype_from_code(head[17]))
    except (ValueError, KeyError):
        raise DataError(f"{prefix}.idx has unknown dtype code {head[17]}") from None
    if dtype.name not in INT_DTYPES:
        raise DataError(f"{prefix}.idx stores {dtype.name} values, not token ids; use a tokenized dataset")
    try:
        with contextlib.redirect_stdout(None):
            ds = indexed_dataset(prefix, mmap=True)
    except (AssertionError, ValueError, OSError) as e:
        raise DataError(f"megatron-core cannot read {prefix}.idx ({type(e).__name__}: {e}); re-run the "
                        "preprocessing") from None
    lengths = ds.index.sequence_lengths
    expected = int(ds.index.sequence_pointers[-1]) + int(lengths[-1]) * dtype.itemsize if len(lengths) else 0
    size = os.path.getsize(prefix + ".bin")
    if size != expected:
        raise DataError(f"{prefix}.bin is {size} bytes but {prefix}.idx describes {expected}; the pair does not "
                        "match (truncated or from another run)")
    return ds, dtype


class MegatronCorpus:
    """One or more Megatron prefixes as blocks of documents (the shard interface of data/corpus.py)."""

    def __init__(self, path: str, block_docs: int = 4096, skip_corrupt: bool = False):
        self.directory = path
        self.prefixes = find_prefixes(path)
        self.skip_corrupt = skip_corrupt
        self.cache_shards = 0                  # mmap: nothing to cache; kept for the loaders' interface
        self.problems: list[tuple[str, int]] = []
        self.bytes_read = 0                    # .bin bytes touched by doc() (the I/O benchmark reads it)
        self.datasets, self.dtypes, self.doc_seq = [], [], []
        metas = []
        lengths, self.block_prefix, self.block_first = [], [], []
        for p, prefix in enumerate(self.prefixes):
            ds, dtype = open_prefix(prefix)
            seq_starts = np.asarray(ds.document_indices, dtype=np.int64)
            seq_len = np.asarray(ds.sequence_lengths, dtype=np.int64)
            cum = np.concatenate([[0], np.cumsum(seq_len)])
            doc_len = cum[seq_starts[1:]] - cum[seq_starts[:-1]]
            self.datasets.append(ds)
            self.dtypes.append(dtype)
            self.doc_seq.append(seq_starts)
            metas.append(read_sidecar(prefix))
            for first in range(0, len(doc_len), block_docs):
                lengths.append(doc_len[first:first + block_docs])
                self.block_prefix.append(p)
                self.block_first.append(first)
        if not lengths:
            raise DataError(f"data.path={path!r}: the Megatron prefixes hold no documents")
        self.lengths = lengths
        self.first_doc = np.concatenate([[0], np.cumsum([len(x) for x in lengths])]).astype(np.int64)
        self.meta = self._agree(metas)
        self.vocab_size = self.meta["vocab_size"] if self.meta else self._scan_vocab()
        for prefix, dtype in zip(self.prefixes, self.dtypes):
            top = np.iinfo(dtype).max
            if self.vocab_size - 1 > top:
                raise DataError(f"{prefix}.idx stores {dtype.name} ids (max {top}) but the tokenizer has "
                                f"{self.vocab_size} ids; the prefix was written for another tokenizer")

    def _agree(self, metas: list[dict | None]) -> dict | None:
        known = [(p, m) for p, m in zip(self.prefixes, metas) if m is not None]
        for p, m in known[1:]:
            if (m["tokenizer"], m["vocab_size"]) != (known[0][1]["tokenizer"], known[0][1]["vocab_size"]):
                raise DataError(f"Megatron prefixes disagree on the tokenizer: {known[0][0]} has "
                                f"{known[0][1]['tokenizer']} ({known[0][1]['vocab_size']} ids), {p} has "
                                f"{m['tokenizer']} ({m['vocab_size']} ids); mix them as separate data.sources")
        return max((m for _, m in known), key=lambda m: m["vocab_size"], default=None)

    def _scan_vocab(self) -> int:
        """Largest token id + 1 over every prefix (no sidecar says the tokenizer's size)."""
        top = 0
        for prefix, dtype in zip(self.prefixes, self.dtypes):
            data = np.memmap(prefix + ".bin", dtype=dtype, mode="r")
            for start in range(0, len(data), 1 << 24):
                part = data[start:start + (1 << 24)]
                if len(part) and int(part.min()) < 0:
                    raise DataError(f"{prefix}.bin holds negative token ids; it is not a tokenized dataset")
                top = max(top, int(part.max()) if len(part) else 0)
            del data
        return top + 1

    @property
    def n_shards(self) -> int:
        return len(self.lengths)

    @property
    def eos(self) -> int | None:
        return self.meta["eos"] if self.meta else None

    def report(self, problem: tuple[str, int]) -> None:
        if problem not in self.problems:
            self.problems.append(problem)

    def doc(self, s: int, i: int):
        """Document i of block s: a lazy view whose slices are read (and id-checked) on demand, so a rank
        touches only the tokens it packs; with skip_corrupt the whole document is checked at once and a bad
        one is None."""
        p = self.block_prefix[s]
        d = self.block_first[s] + i
        seqs = self.doc_seq[p]
        first, last = int(seqs[d]), int(seqs[d + 1])
        if last - first == 1 and not self.skip_corrupt:
            return _LazyDoc(self, p, d, first)
        tokens = np.concatenate([self.datasets[p].get(q) for q in range(first, last)])
        self.bytes_read += tokens.nbytes
        bad = self.check(p, d, tokens)
        if bad is None:
            return tokens
        if not self.skip_corrupt:
            raise DataError(bad + "; the prefix does not match the tokenizer (or set data.skip_corrupt=true)")
        self.report((bad, 1))
        return None

    def check(self, p: int, d: int, tokens: np.ndarray) -> str | None:
        """A message when `tokens` (of document d of prefix p) hold an id outside the vocabulary."""
        if len(tokens) and (int(tokens.max()) >= self.vocab_size or int(tokens.min()) < 0):
            return (f"{self.prefixes[p]} document {d}: token id {int(tokens.max())} outside the vocabulary "
                    f"of {self.vocab_size}")
        return None

    def locate(self, global_doc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(block, index in block) of global document indices."""
        s = np.searchsorted(self.first_doc, global_doc, side="right") - 1
        return s, global_doc - self.first_doc[s]


class _LazyDoc:
    """A one-sequence document read slice by slice from the memory map (what the packers index)."""

    def __init__(self, corpus: MegatronCorpus, p: int, d: int, seq: int):
        self.corpus, self.p, self.d, self.seq = corpus, p, d, seq
        self.length = int(corpus.datasets[p].index.sequence_lengths[seq])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, sl: slice) -> np.ndarray:
        start, stop, _ = sl.indices(self.length)
        tokens = self.corpus.datasets[self.p].get(self.seq, offset=start, length=max(0, stop - start))
        self.corpus.bytes_read += tokens.nbytes
        bad = self.corpus.check(self.p, self.d, tokens)
        if bad is not None:
            raise DataError(bad + "; the prefix does not match the tokenizer (or set data.skip_corrupt=true)")
        return tokens


class MegatronWriter:
    """Documents → PREFIX.bin/.idx with megatron-core's builder, plus the PREFIX.json sidecar."""

    def __init__(self, prefix: str | Path, vocab_size: int):
        _, builder, dtype_enum = import_indexed_dataset()
        self.prefix = str(prefix)
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        self.dtype = dtype_enum.optimal_dtype(vocab_size)
        self.builder = builder(self.prefix + ".bin", dtype=self.dtype)
        self.lengths: list[int] = []

    def add(self, tokens: np.ndarray) -> None:
        import torch

        self.builder.add_item(torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64)))
        self.builder.end_document()
        self.lengths.append(len(tokens))

    def close(self, tokenizer: str, vocab_size: int, eos: int) -> np.ndarray:
        self.builder.finalize(self.prefix + ".idx")
        meta = {"format": SIDECAR_FORMAT, "tokenizer": tokenizer, "vocab_size": int(vocab_size), "eos": int(eos),
                "dtype": np.dtype(self.dtype).name, "documents": len(self.lengths), "tokens": int(sum(self.lengths))}
        Path(self.prefix + ".json").write_text(json.dumps(meta, indent=1) + "\n")
        return np.asarray(self.lengths, dtype=np.int64)
