"""Write webdataset token shards + manifest.json from text files (or the synthetic corpus).

    python -m data.prepare --input corpus/ more.jsonl --output shards/ --tokenizer byte
    python -m data.prepare --synthetic 20000 --output shards/          # the embedded corpus
    python -m data.prepare --input corpus/ --output mega/ --format megatron   # mega/text_document.bin/.idx
    python -m data.prepare --input-hf local_dataset/ --split train --field text --tokenizer hf:tok/ --output out/
    options: --tokenizer byte|tiktoken:NAME|hf:PATH  --shard-tokens N  --workers K
             --jsonl-field text  --seed S (synthetic)  --overwrite

Inputs: .txt files (one document each), .jsonl files (one document per line, text under
--jsonl-field), and directories searched recursively for both (sorted, so the order is
reproducible). Every document gets the tokenizer's end marker. Unreadable files, non-UTF-8
text and bad JSON lines are reported (file and count) and skipped, empty documents dropped;
manifest.json records what was skipped. Tokenizing runs on K worker processes; the output
is identical for any K (documents keep input order).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from data.errors import DataError
from data.manifest import CHECKSUMS, LENGTHS, MANIFEST, OFFSETS, Manifest
from data.shards import ShardWriter, token_dtype
from data.synthetic import synthetic_document
from data.tokenizer import TokenizerError, get_tokenizer


class PrepareError(DataError):
    """A user error in data.prepare's arguments or output directory (one line, exit 2)."""


TEXT_SUFFIXES = (".txt", ".jsonl")
TASK_DOCS = 64          # documents per task sent to a tokenizer worker
MEGATRON_PREFIX = "text_document"   # --format megatron writes OUTPUT/text_document.{bin,idx,json}


class Skipped:
    """Per-file problem counts (what manifest.json's "skipped" records)."""

    def __init__(self) -> None:
        self.files: dict[str, Counter] = {}
        self.empty_documents = 0

    def add(self, path: Path | str, reason: str, count: int = 1) -> None:
        self.files.setdefault(str(path), Counter())[reason] += count

    def to_json(self) -> dict:
        return {"empty_documents": self.empty_documents,
                "files": {p: dict(c) for p, c in self.files.items()},
                "documents": sum(sum(c.values()) for c in self.files.values())}


def find_inputs(paths: list[str], skipped: Skipped) -> list[Path]:
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix in TEXT_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            skipped.add(p, "not found")
    return found


def iter_texts(files: list[Path], field: str, skipped: Skipped) -> Iterator[str]:
    for path in files:
        try:
            raw = path.read_bytes()
        except OSError as e:
            skipped.add(path, f"unreadable ({e.strerror or e})")
            continue
        if path.suffix == ".jsonl":
            for line in raw.splitlines():
                if not line.strip():
                    continue
                try:
                    text = json.loads(line.decode("utf-8"))[field]
                    if not isinstance(text, str):
                        raise TypeError
                except UnicodeDecodeError:
                    skipped.add(path, "non-UTF-8 line")
                    continue
                except (json.JSONDecodeError, KeyError, TypeError):
                    skipped.add(path, f"bad JSON line or no string field {field!r}")
                    continue
                yield text
        else:
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                skipped.add(path, "non-UTF-8 text")


_TOKENIZER = None


def _init_worker(spec: str) -> None:
    global _TOKENIZER
    _TOKENIZER = get_tokenizer(spec)


def _tokenize(task: tuple) -> list[np.ndarray]:
    """A task is ("text", [str...]) or ("synthetic", seed, start, stop, min_chars, max_chars).

    Empty documents come back empty (the writer counts and drops them).
    """
    if task[0] == "synthetic":
        _, seed, start, stop, lo, hi = task
        texts = [synthetic_document(seed, i, lo, hi) for i in range(start, stop)]
    else:
        texts = task[1]
    if hasattr(_TOKENIZER, "encode_documents"):        # a fast tokenizer encodes the batch at once
        return _TOKENIZER.encode_documents(texts)
    return [_TOKENIZER.encode_document(t) if t.strip() else np.empty(0, np.int64) for t in texts]


def make_tasks(args, skipped: Skipped) -> Iterator[tuple]:
    if args.synthetic:
        for start in range(0, args.synthetic, TASK_DOCS):
            yield ("synthetic", args.seed, start, min(args.synthetic, start + TASK_DOCS), args.min_chars,
                   args.max_chars)
        return
    if args.input_hf:                        # a local Hugging Face dataset, streamed in batches
        from data.hf_input import hf_texts

        for texts in hf_texts(args.input_hf, args.split, args.field, args.batch_docs, skipped):
            yield ("text", texts)
        return
    batch: list[str] = []
    for text in iter_texts(find_inputs(args.input, skipped), args.jsonl_field, skipped):
        batch.append(text)
        if len(batch) == TASK_DOCS:
            yield ("text", batch)
            batch = []
    if batch:
        yield ("text", batch)


def tokenized(args, tokenizer, skipped: Skipped) -> Iterator[list[np.ndarray]]:
    """Token arrays of every task, in input order, tokenized on --workers processes."""
    tasks = make_tasks(args, skipped)
    if args.workers <= 1:
        _init_worker(tokenizer.name)
        yield from map(_tokenize, tasks)
        return
    pool = mp.get_context("fork").Pool(args.workers, _init_worker, (tokenizer.name,))
    try:
        yield from pool.imap(_tokenize, tasks, chunksize=1)
    finally:
        pool.close()
        pool.join()


class Progress:
    """One status line on stderr: documents, tokens, docs/s, tokens/s.

    Redrawn in place at most 4×/s on a terminal; a new line every 10 s when stderr is a log file.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.every = 0.25 if self.tty else 10.0
        self.t0 = self.last = time.perf_counter()
        self.docs = self.tokens = 0

    def update(self, docs: int, tokens: int, shards: int, final: bool = False) -> None:
        self.docs += docs
        self.tokens += tokens
        now = time.perf_counter()
        if not self.enabled or (not final and now - self.last < self.every):
            return
        self.last = now
        dt = max(now - self.t0, 1e-9)
        end = "\n" if final or not self.tty else ""
        start = "\r" if self.tty else ""
        print(f"{start}{self.docs:,} docs  {self.tokens:,} tokens  {shards} shards  |  {self.docs / dt:,.0f} docs/s  "
              f"{self.tokens / dt:,.0f} tokens/s", end=end, file=sys.stderr, flush=True)


def prepare(args) -> Manifest | np.ndarray:
    out = Path(args.output)
    if (out / MANIFEST).exists() and not args.overwrite:
        raise PrepareError(f"{out / MANIFEST} exists; pass --overwrite or choose another --output")
    if not args.synthetic and not args.input and not args.input_hf:
        raise PrepareError("give --input PATH..., --input-hf PATH or --synthetic N")
    tokenizer = get_tokenizer(args.tokenizer)
    if args.format == "megatron":
        return prepare_megatron(args, tokenizer)
    for stale in out.glob("shard-*.tar") if args.overwrite else ():   # an older, larger run's shards
        stale.unlink()
    dtype = token_dtype(tokenizer.vocab_size)
    skipped = Skipped()
    writer = ShardWriter(out, dtype, args.shard_tokens)
    progress = Progress(not args.quiet)
    t0 = time.perf_counter()
    for docs in tokenized(args, tokenizer, skipped):
        n_tok = 0
        for d in docs:
            if len(d) == 0:
                skipped.empty_documents += 1
                continue
            writer.add(d)
            n_tok += len(d)
        progress.update(len(docs), n_tok, len(writer.shards))
    shards, lengths = writer.close()
    progress.update(0, 0, len(shards), final=True)
    np.save(out / LENGTHS, lengths)
    np.save(out / CHECKSUMS, np.asarray(writer.checksums, dtype=np.uint32))
    np.save(out / OFFSETS, np.asarray(writer.offsets, dtype=np.int64).reshape(-1, 2))
    seconds = time.perf_counter() - t0
    manifest = Manifest(
        tokenizer.name, int(tokenizer.vocab_size), int(tokenizer.eos), dtype, shards, skipped.to_json(),
        {"args": sys.argv[1:] if args.argv is None else args.argv, "time": datetime.now(timezone.utc).isoformat(),
         "inputs": args.input or args.input_hf, "synthetic": args.synthetic, "seed": args.seed, "shard_tokens": args.shard_tokens,
         "workers": args.workers, "seconds": round(seconds, 3),
         "tokens_per_second": round(int(lengths.sum()) / max(seconds, 1e-9), 1)}, checksums_file=CHECKSUMS,
        offsets_file=OFFSETS)
    manifest.write(out)
    for path, counts in skipped.files.items():
        print(f"warning: skipped {sum(counts.values())} document(s) from {path}: "
              + ", ".join(f"{k} ×{v}" for k, v in counts.items()), file=sys.stderr)
    if skipped.empty_documents:
        print(f"warning: dropped {skipped.empty_documents} empty document(s)", file=sys.stderr)
    if not args.quiet:
        print(f"wrote {manifest.documents:,} documents, {manifest.tokens:,} tokens ({dtype}) in {len(shards)} "
              f"shards to {out} in {seconds:.2f}s ({manifest.tokens / max(seconds, 1e-9):,.0f} tokens/s)")
    return manifest


def prepare_megatron(args, tokenizer) -> np.ndarray:
    """--format megatron: the same documents into OUTPUT/text_document.bin/.idx (megatron-core's builder)."""
    from data.megatron import MegatronWriter

    out = Path(args.output)
    prefix = out / MEGATRON_PREFIX
    if Path(f"{prefix}.idx").exists() and not args.overwrite:
        raise DataError(f"{prefix}.idx exists; pass --overwrite or choose another --output")
    writer = MegatronWriter(prefix, tokenizer.vocab_size)
    skipped, progress, t0 = Skipped(), Progress(not args.quiet), time.perf_counter()
    for docs in tokenized(args, tokenizer, skipped):
        kept = [d for d in docs if len(d)]
        skipped.empty_documents += len(docs) - len(kept)
        for d in kept:
            writer.add(d)
        progress.update(len(docs), sum(len(d) for d in kept), 0)
    lengths = writer.close(tokenizer.name, tokenizer.vocab_size, tokenizer.eos)
    progress.update(0, 0, 0, final=True)
    seconds = time.perf_counter() - t0
    if skipped.empty_documents:
        print(f"warning: dropped {skipped.empty_documents} empty document(s)", file=sys.stderr)
    for path, counts in skipped.files.items():
        print(f"warning: skipped {sum(counts.values())} document(s) from {path}: "
              + ", ".join(f"{k} ×{v}" for k, v in counts.items()), file=sys.stderr)
    if not args.quiet:
        print(f"wrote {len(lengths):,} documents, {int(lengths.sum()):,} tokens to {prefix}.bin/.idx in "
              f"{seconds:.2f}s ({int(lengths.sum()) / max(seconds, 1e-9):,.0f} tokens/s)")
    return lengths


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m data.prepare", description=__doc__.split("\n")[0])
    p.add_argument("--input", nargs="+", default=[], help=".txt / .jsonl files or directories of them")
    p.add_argument("--output", required=True, help="shard directory to create")
    p.add_argument("--tokenizer", default="byte", help="byte | tiktoken:NAME | hf:PATH (default byte)")
    p.add_argument("--format", choices=("shards", "megatron"), default="shards",
                   help="shards (webdataset + manifest.json) or megatron (.bin/.idx via megatron-core)")
    p.add_argument("--shard-tokens", type=int, default=1 << 24, help="tokens per shard before starting a new one")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    p.add_argument("--jsonl-field", default="text", help="field holding the text in .jsonl lines")
    p.add_argument("--input-hf", default="", help="a local Hugging Face dataset: parquet/arrow/json(l) file, a "
                   "directory of them, or a save_to_disk directory (streamed, never downloaded)")
    p.add_argument("--split", default="train", help="--input-hf: the split to read (default train)")
    p.add_argument("--field", default="text", help="--input-hf: the column holding the text (default text)")
    p.add_argument("--batch-docs", type=int, default=512, help="--input-hf: documents per tokenizer batch")
    p.add_argument("--synthetic", type=int, default=0, help="write N documents of the embedded synthetic corpus")
    p.add_argument("--seed", type=int, default=1234, help="synthetic corpus seed")
    p.add_argument("--min-chars", type=int, default=400, help="synthetic document size range (characters)")
    p.add_argument("--max-chars", type=int, default=6000)
    p.add_argument("--overwrite", action="store_true", help="replace an existing manifest in --output")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.argv = argv
    if args.shard_tokens <= 0 or args.workers < 0:
        p.error("--shard-tokens must be > 0 and --workers >= 0")
    return args


def write_synthetic_shards(output: str | Path, documents: int, shard_tokens: int = 1 << 24, seed: int = 1234,
                           min_chars: int = 400, max_chars: int = 6000, workers: int = 1) -> Manifest:
    """`python -m data.prepare --synthetic N` as a function (tests, benchmarks)."""
    return prepare(parse_args(["--synthetic", str(documents), "--output", str(output), "--shard-tokens",
                               str(shard_tokens), "--seed", str(seed), "--min-chars", str(min_chars),
                               "--max-chars", str(max_chars), "--workers", str(workers), "--overwrite",
                               "--quiet"]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        prepare(args)
    except (TokenizerError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:      # an unwritable or full --output
        where = e.filename or args.output
        print(f"error: cannot write {where}: {e.strerror or e}; choose a writable --output with free space",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
