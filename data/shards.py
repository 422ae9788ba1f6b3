"""Webdataset token shards: writing and reading.

A shard is a plain webdataset tar: one sample per document, key = the document's global index
(10 digits), one member `<key>.tokens.npy` holding a 1-D uint16/uint32 array. Any webdataset
pipeline can read it (`wds.WebDataset(url).decode()` gives sample["tokens.npy"]).

Reading goes through webdataset's tar iterator and checks every sample against what was
recorded at write time: its length, the CRC-32 of its stored bytes (zlib.crc32, a few GB/s),
and that every token id is below the tokenizer's vocabulary. A truncated or corrupt shard is
reported by shard and sample (CorruptShardError, a DataError: one line, exit 2), or skipped and
counted with data.skip_corrupt; it never silently yields different tokens.
"""
from __future__ import annotations

import io
import tarfile
import zlib
from pathlib import Path

import numpy as np
import webdataset as wds
from webdataset import tariterators

from data.errors import DataError
from data.manifest import ShardInfo

MEMBER = "tokens.npy"


class CorruptShardError(DataError):
    """A shard could not be read back as written (names the shard and the sample)."""


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def sample_key(doc_index: int) -> str:
    return f"{doc_index:010d}"


def encode_npy(tokens: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, tokens, allow_pickle=False)
    return buf.getvalue()


class ShardWriter:
    """Writes documents into `<dir>/<prefix>-NNNNNN.tar`, starting a new shard past `shard_tokens`.

    Documents never straddle shards. `close()` returns the ShardInfo list and the per-document
    lengths in write order (what manifest.json and lengths.npy record); `checksums` holds each
    sample's CRC-32 in the same order (checksums.npy).
    """

    def __init__(self, directory: str | Path, dtype: str, shard_tokens: int, prefix: str = "shard"):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(dtype)
        self.max_value = np.iinfo(self.dtype).max
        self.shard_tokens = shard_tokens
        self.prefix = prefix
        self.shards: list[ShardInfo] = []
        self.lengths: list[int] = []
        self.checksums: list[int] = []
        self.offsets: list[tuple[int, int]] = []    # (payload offset in its tar, payload bytes) per sample
        self._tar: wds.TarWriter | None = None
        self._fh = None
        self._docs = self._tokens = 0

    def _open(self) -> None:
        name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self._fh = open(self.directory / name, "wb")
        self._tar = wds.TarWriter(self._fh, encoder=False, mtime=0.0)
        self._name, self._docs, self._tokens = name, 0, 0

    def _close_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._fh.close()
        size = (self.directory / self._name).stat().st_size
        self.offsets.extend(payload_offsets(self.directory / self._name))
        self.shards.append(ShardInfo(self._name, self._docs, self._tokens, size))
        self._tar = self._fh = None

    def add(self, tokens: np.ndarray) -> None:
        if len(tokens) == 0:
            raise ValueError("empty documents are dropped before writing")
        if int(tokens.max()) > self.max_value or int(tokens.min()) < 0:
            raise ValueError(f"token id out of range for {self.dtype.name}")
        if self._tar is None:
            self._open()
        key = sample_key(len(self.lengths))
        payload = encode_npy(tokens.astype(self.dtype))
        self._tar.write({"__key__": key, MEMBER: payload})
        self.checksums.append(zlib.crc32(payload))
        self.lengths.append(len(tokens))
        self._docs += 1
        self._tokens += len(tokens)
        if self._tokens >= self.shard_tokens:
            self._close_shard()

    def close(self) -> tuple[list[ShardInfo], np.ndarray]:
        self._close_shard()
        return self.shards, np.asarray(self.lengths, dtype=np.int64)


def payload_offsets(path: str | Path) -> list[tuple[int, int]]:
    """(offset, size) of every member's bytes in a tar, in order; reads the headers only."""
    with tarfile.open(path, "r:") as tar:
        return [(m.offset_data, m.size) for m in tar.getmembers() if m.isfile()]


def decode_sample(data: bytes, length: int, checksum: int | None, vocab_size: int | None
                  ) -> tuple[np.ndarray | None, str]:
    """A sample's tokens checked against its recorded length, CRC-32 and the vocabulary, or
    (None, what is wrong)."""
    if checksum is not None and zlib.crc32(data) != int(checksum):
        return None, f"checksum mismatch (CRC-32 {zlib.crc32(data):08x}, manifest {int(checksum):08x})"
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
        if arr.ndim != 1 or len(arr) != length:
            raise ValueError(f"{arr.shape} tokens, lengths.npy says {int(length)}")
    except Exception as e:  # noqa: BLE001 - any decode failure is a corrupt sample
        return None, f"cannot decode tokens ({e})"
    top = int(arr.max()) if vocab_size is not None else -1
    if vocab_size is not None and top >= vocab_size:
        return None, f"token id {top} >= the tokenizer's vocab_size {vocab_size}"
    return arr, ""


def sample_error(path: Path, first_doc: int, i: int, why: str, skip_corrupt: bool, lost: int = 1
                 ) -> tuple[str, int]:
    """The (message, documents lost) of a bad sample; raises CorruptShardError unless skip_corrupt."""
    msg = f"shard {path.name} sample {sample_key(first_doc + i)} (#{i} in shard): {why}"
    if not skip_corrupt:
        raise CorruptShardError(msg + "; re-run data.prepare or set data.skip_corrupt=true")
    return msg + (f"; {lost} documents lost" if lost > 1 else ""), lost


def read_sample(path: str | Path, offset: int, size: int, length: int, first_doc: int, i: int,
                checksum: int | None, vocab_size: int | None, skip_corrupt: bool = False
                ) -> tuple[np.ndarray | None, list[tuple[str, int]]]:
    """Sample i of one shard alone, from its recorded byte range (what a data-parallel rank reads
    instead of the whole shard); checked as read_shard checks every sample."""
    path = Path(path)
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(size)
    arr, why = (None, f"shard ends inside the sample ({len(data)} of {size} bytes)") if len(data) != size \
        else decode_sample(data, length, checksum, vocab_size)
    if arr is None:
        return None, [sample_error(path, first_doc, i, why, skip_corrupt)]
    return arr, []


def read_shard(path: str | Path, lengths: np.ndarray, first_doc: int, skip_corrupt: bool = False,
               checksums: np.ndarray | None = None, vocab_size: int | None = None,
               ) -> tuple[list[np.ndarray | None], list[tuple[str, int]]]:
    """Every document of one shard, in order, checked against `lengths`, `checksums` (CRC-32 of each
    sample's bytes; None for shards written without them) and `vocab_size` (every id below it).

    Returns (docs, problems): docs[i] is None where sample i was unreadable (only with
    skip_corrupt; otherwise the first problem raises CorruptShardError naming shard and sample);
    a problem is (message, documents lost), one per event (a broken tar loses the rest of the shard).
    """
    path = Path(path)
    n = len(lengths)
    docs: list[np.ndarray | None] = [None] * n
    problems: list[tuple[str, int]] = []

    def bad(i: int, why: str, lost: int = 1) -> None:
        problems.append(sample_error(path, first_doc, i, why, skip_corrupt, lost))

    i, broken = 0, False
    try:
        with open(path, "rb") as fh:
            stream = tariterators.tar_file_iterator(fh)
            for item in stream:
                if i >= n:
                    bad(i, f"extra sample beyond the {n} the manifest lists")
                    break
                fname, data = item["fname"], item["data"]
                if fname != f"{sample_key(first_doc + i)}.{MEMBER}":
                    bad(i, f"unexpected member {fname!r}")
                else:
                    docs[i], why = decode_sample(data, lengths[i], None if checksums is None else checksums[i],
                                                 vocab_size)
                    if docs[i] is None:
                        bad(i, why)
                i += 1
    except CorruptShardError:
        raise
    except Exception as e:  # noqa: BLE001 - tar-level damage (truncation, bad header)
        broken = True
        bad(i, f"tar stream broken ({type(e).__name__}: {e})", n - i)
    if i < n and not broken:
        bad(i, f"shard ends after {i} of {n} samples (truncated)", n - i)
    return docs, problems
