"""manifest.json: what a shard directory holds, checked before a run starts.

    {"format": "longweave-shards", "version": 2, "tokenizer": "byte", "vocab_size": 259, "eos": 257,
     "dtype": "uint16", "documents": N, "tokens": M, "lengths": "lengths.npy", "checksums": "checksums.npy",
     "shards": [{"name": "shard-000000.tar", "documents": n, "tokens": t, "bytes": b}, ...],
     "skipped": {...}, "created": {...}}

`lengths.npy` holds every document's token count in shard order; `checksums.npy` (version 2)
the CRC-32 of every sample's stored bytes, in the same order, which the reader verifies as it
reads; `offsets.npy` (optional, "offsets") where each sample's bytes start inside its tar and
how many there are, so a data-parallel rank reads only the documents it packs. A version-1 manifest (no checksums) is still read, with a one-line warning that byte
damage in token data cannot be detected until data.prepare is re-run. The top-level document
and token totals must equal the per-shard sums. The loader lays out its
whole token stream from it without reading a shard, which is what makes its order a pure
function of (seed, epoch, position). `validate` compares the manifest with the files on disk
(presence, byte sizes, per-shard counts vs lengths.npy) so a mismatch stops the run at start,
not hours into it.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.errors import DataError

FORMAT = "longweave-shards"
MANIFEST = "manifest.json"
LENGTHS = "lengths.npy"
CHECKSUMS = "checksums.npy"
OFFSETS = "offsets.npy"


class ManifestError(DataError):
    """The shard directory and its manifest disagree (one-line message)."""


@dataclass
class ShardInfo:
    name: str
    documents: int
    tokens: int
    bytes: int


@dataclass
class Manifest:
    tokenizer: str
    vocab_size: int
    eos: int
    dtype: str
    shards: list[ShardInfo]
    skipped: dict = field(default_factory=dict)
    created: dict = field(default_factory=dict)
    lengths_file: str = LENGTHS
    checksums_file: str = ""          # "" = written before checksums existed (version 1)
    offsets_file: str = ""            # "" = no per-sample byte offsets: shards are read whole

    @property
    def documents(self) -> int:
        return sum(s.documents for s in self.shards)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    def to_json(self) -> dict:
        extra = {**({"checksums": self.checksums_file} if self.checksums_file else {}),
                 **({"offsets": self.offsets_file} if self.offsets_file else {})}
        return {"format": FORMAT, "version": 2 if self.checksums_file else 1, "tokenizer": self.tokenizer,
                "vocab_size": self.vocab_size, "eos": self.eos, "dtype": self.dtype, "documents": self.documents,
                "tokens": self.tokens, "lengths": self.lengths_file, **extra, "shards": [vars(s) for s in self.shards],
                "skipped": self.skipped, "created": self.created}

    def write(self, directory: str | Path) -> None:
        path = Path(directory) / MANIFEST
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        tmp.replace(path)


def read_manifest(directory: str | Path) -> Manifest:
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{path} not found; write shards with `python -m data.prepare --output {directory} ...`")
    try:
        raw = json.loads(path.read_text())
        if raw.get("format") != FORMAT:
            raise ManifestError(f"{path} is not a longweave shard manifest (format={raw.get('format')!r})")
        shards = [ShardInfo(s["name"], int(s["documents"]), int(s["tokens"]), int(s["bytes"]))
                  for s in raw["shards"]]
        m = Manifest(raw["tokenizer"], int(raw["vocab_size"]), int(raw["eos"]), raw["dtype"], shards,
                     raw.get("skipped", {}), raw.get("created", {}), raw.get("lengths", LENGTHS),
                     raw.get("checksums", ""), raw.get("offsets", ""))
        totals = {"documents": int(raw["documents"]), "tokens": int(raw["tokens"])}
    except (KeyError, TypeError, ValueError) as e:
        raise ManifestError(f"{path} is malformed ({type(e).__name__}: {e}); re-run data.prepare") from None
    for key, total in totals.items():
        if total != getattr(m, key):
            raise ManifestError(f"{path} says {total} {key} in total but its shards add up to {getattr(m, key)}; "
                                "the manifest was edited or damaged, re-run data.prepare")
    return m


def read_lengths(directory: str | Path, manifest: Manifest) -> list[np.ndarray]:
    """Per-shard arrays of document lengths, checked against the manifest's counts."""
    path = Path(directory) / manifest.lengths_file
    if not path.is_file():
        raise ManifestError(f"{path} (document lengths) is missing; re-run data.prepare for {directory}")
    flat = np.load(path).astype(np.int64)
    if len(flat) != manifest.documents:
        raise ManifestError(f"{path} lists {len(flat)} documents but the manifest says {manifest.documents}; "
                            "re-run data.prepare")
    out, start = [], 0
    for s in manifest.shards:
        part = flat[start:start + s.documents]
        start += s.documents
        if int(part.sum()) != s.tokens:
            raise ManifestError(f"shard {s.name}: lengths.npy sums to {int(part.sum())} tokens, manifest says "
                                f"{s.tokens}; re-run data.prepare")
        out.append(part)
    return out


def read_checksums(directory: str | Path, manifest: Manifest) -> list[np.ndarray] | None:
    """Per-shard arrays of per-sample CRC-32s, or None for a version-1 manifest (warned once)."""
    if not manifest.checksums_file:
        if str(directory) not in _warned_unchecked:
            _warned_unchecked.add(str(directory))
            print(f"warning: {Path(directory) / MANIFEST} has no per-sample checksums (an older data.prepare); "
                  "damaged token bytes cannot be detected, re-run data.prepare to add them", file=sys.stderr)
        return None
    path = Path(directory) / manifest.checksums_file
    try:
        flat = np.load(path)
    except (OSError, ValueError) as e:
        raise ManifestError(f"{path} (sample checksums) cannot be read ({e}); re-run data.prepare") from None
    if flat.shape != (manifest.documents,):
        raise ManifestError(f"{path} holds {flat.size} checksums but the manifest lists {manifest.documents} "
                            "documents; re-run data.prepare")
    bounds = np.cumsum([0] + [s.documents for s in manifest.shards])
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


_warned_unchecked: set[str] = set()


def read_offsets(directory: str | Path, manifest: Manifest) -> list[np.ndarray] | None:
    """Per-shard [n, 2] arrays of (byte offset, byte size) of each sample's token payload inside its
    tar, or None where the manifest has none (shards from an older data.prepare are read whole)."""
    if not manifest.offsets_file:
        return None
    path = Path(directory) / manifest.offsets_file
    try:
        flat = np.load(path).astype(np.int64)
    except (OSError, ValueError) as e:
        raise ManifestError(f"{path} (sample offsets) cannot be read ({e}); re-run data.prepare") from None
    if flat.shape != (manifest.documents, 2):
        raise ManifestError(f"{path} has shape {flat.shape}, expected ({manifest.documents}, 2) for the manifest's "
                            "documents; re-run data.prepare")
    bounds = np.cumsum([0] + [s.documents for s in manifest.shards])
    parts = [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    for s, part in zip(manifest.shards, parts):
        if len(part) and (part.min() < 0 or int((part[:, 0] + part[:, 1]).max()) > s.bytes):
            raise ManifestError(f"{path}: a sample of shard {s.name} lies outside its {s.bytes} bytes; "
                                "re-run data.prepare")
    return parts


def check_files(directory: str | Path, manifest: Manifest) -> list[str]:
    """Raise if a listed shard is missing; return the names whose byte size differs (maybe truncated)."""
    directory = Path(directory)
    if not manifest.shards:
        raise ManifestError(f"{directory / MANIFEST} lists no shards; the input had no usable documents")
    mismatched = []
    for s in manifest.shards:
        p = directory / s.name
        if not p.is_file():
            raise ManifestError(f"shard {p} is listed in the manifest but missing; restore it or re-run data.prepare")
        if p.stat().st_size != s.bytes:
            mismatched.append(s.name)
    return mismatched
