"""A shard directory as a random-access corpus of documents.

Construction validates the manifest against the files (missing shard, lengths.npy disagreeing
with the counts → ManifestError at start). A shard whose byte size differs from the manifest is
read at start to find the first bad sample: without `skip_corrupt` that is a CorruptShardError
naming shard and sample; with it the unreadable documents get length 0 in the layout (every
rank computes the same layout, so all ranks still agree on every batch) and a counted warning.

With per-sample offsets (offsets.npy, written by data.prepare) a document is read alone, from its
byte range, so a data-parallel rank reads only the documents it packs (plus the ones its rows
share with a neighbour's); without them, or for a shard found damaged at start, shards are read
whole and cached.

Damage that only shows when a shard is read mid-run (same size, bad bytes) cannot change the
layout any more; with `skip_corrupt` the document is returned as None and the packer masks its
tokens out of the loss (counted warning), otherwise the read raises.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from data.manifest import (
    Manifest,
    ManifestError,
    check_files,
    read_checksums,
    read_lengths,
    read_manifest,
    read_offsets,
)
from data.shards import read_sample, read_shard

DOC_CACHE = 64      # documents kept after a per-sample read: a row boundary splits one between two rows


class ShardCorpus:
    def __init__(self, directory: str | Path, skip_corrupt: bool = False, cache_shards: int = 4):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ManifestError(f"data.path={str(directory)!r} is not a directory; point it at a "
                                "`python -m data.prepare` output")
        self.manifest: Manifest = read_manifest(self.directory)
        self.skip_corrupt = skip_corrupt
        self.cache_shards = cache_shards
        self.written_lengths = read_lengths(self.directory, self.manifest)   # per shard, as written
        self.lengths = [x.copy() for x in self.written_lengths]              # the layout's (0 = excluded)
        self.checksums = read_checksums(self.directory, self.manifest)       # per shard, or None (version 1)
        self.offsets = read_offsets(self.directory, self.manifest)           # per shard, or None: read whole
        self.read_whole: set[int] = set()    # shards damaged at start: their documents come from read_shard
        self.bytes_read = 0                  # bytes of per-sample reads (the I/O benchmark reads it)
        self._docs: OrderedDict[tuple[int, int], np.ndarray | None] = OrderedDict()
        self.first_doc = np.concatenate([[0], np.cumsum([len(x) for x in self.lengths])]).astype(np.int64)
        self.problems: list[tuple[str, int]] = []    # (message, documents lost), in order met
        self._cache: OrderedDict[int, list[np.ndarray | None]] = OrderedDict()
        names = [s.name for s in self.manifest.shards]
        for name in check_files(self.directory, self.manifest):
            s = names.index(name)
            docs, problems = self._read(s, skip_corrupt)
            self.read_whole.add(s)
            if not problems:
                raise ManifestError(f"shard {name} is {(self.directory / name).stat().st_size} bytes but the "
                                    f"manifest says {self.manifest.shards[s].bytes}; re-run data.prepare")
            self.lengths[s] = np.asarray([0 if d is None else len(d) for d in docs], dtype=np.int64)
            for p in problems:
                self.report(p)

    @property
    def n_shards(self) -> int:
        return len(self.lengths)

    @property
    def vocab_size(self) -> int:
        return self.manifest.vocab_size

    def report(self, problem: tuple[str, int]) -> None:
        """Record one skipped-data event (only reachable with skip_corrupt); the loader logs and counts it."""
        if problem not in self.problems:      # a shard re-read after eviction reports the same damage
            self.problems.append(problem)

    def shard_docs(self, s: int) -> list[np.ndarray | None]:
        if s in self._cache:
            self._cache.move_to_end(s)
            return self._cache[s]
        docs, problems = self._read(s, self.skip_corrupt)
        for p in problems:
            self.report(p)
        self._cache[s] = docs
        while len(self._cache) > self.cache_shards:
            self._cache.popitem(last=False)
        return docs

    def _read(self, s: int, skip_corrupt: bool):
        """Read shard s, verifying lengths, checksums and ids < vocab_size."""
        return read_shard(self.directory / self.manifest.shards[s].name, self.written_lengths[s],
                          int(self.first_doc[s]), skip_corrupt,
                          None if self.checksums is None else self.checksums[s], self.manifest.vocab_size)

    def doc(self, s: int, i: int) -> np.ndarray | None:
        """Document i of shard s, or None when it is corrupt and skip_corrupt is on."""
        if self.offsets is None or s in self.read_whole:
            return self.shard_docs(s)[i]
        key = (s, i)
        if key in self._docs:
            self._docs.move_to_end(key)
            return self._docs[key]
        offset, size = (int(v) for v in self.offsets[s][i])
        doc, problems = read_sample(self.directory / self.manifest.shards[s].name, offset, size,
                                    int(self.written_lengths[s][i]), int(self.first_doc[s]), i,
                                    None if self.checksums is None else self.checksums[s][i],
                                    self.manifest.vocab_size, self.skip_corrupt)
        self.bytes_read += size
        for p in problems:
            self.report(p)
        self._docs[key] = doc
        while len(self._docs) > DOC_CACHE:
            self._docs.popitem(last=False)
        return doc

    def locate(self, global_doc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, index in shard) of global document indices."""
        s = np.searchsorted(self.first_doc, global_doc, side="right") - 1
        return s, global_doc - self.first_doc[s]
