"""Data pipeline throughput: writing (shards, Megatron, Hugging Face input), the loaders (shards,
Megatron, a mixture) and the tokens/s the CPU trainer consumes, all in one run; then I/O per rank.

    python benchmarks/data_loader.py [--docs 3000] [--seq-len 256] [--batch-size 8] [--train-steps 30]

Writes the synthetic corpus as shards and as a Megatron prefix (timing `data.prepare`), and a
parquet copy read back through `--input-hf` (byte tokenizer, and a locally trained fast tokenizer
when transformers is installed). Measures loader tokens/s for every source (concat packing and
Dataset Decomposition; a two-source mixture with long-document upsampling) with num_workers 0, 1
and 2, and the tokens/s the tiny CPU model (configs/tiny.toml) consumes on the same shards. The
goal is every loader setting ≥ 10× what training consumes, so data never stalls a step.

I/O per rank: data-parallel ranks (simulated in this process) together take one epoch of the shard
corpus; the table gives the bytes each rank read over the bytes of the tokens it consumed (1.0 =
reads only what it uses). Shards with offsets.npy are read document by document (each rank reads
the whole documents its rows touch: about 1 + document length / row length, at most dp);
Megatron prefixes are memory-mapped and read slice by slice.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import data.corpus as corpus_module  # noqa: E402
from data.megatron import MegatronCorpus, import_indexed_dataset  # noqa: E402
from data.mixture import MixtureLoader  # noqa: E402
from data.prepare import main as prepare_main  # noqa: E402
from data.prepare import write_synthetic_shards  # noqa: E402
from data.stream import ShardLoader  # noqa: E402
from train.config import SourceConfig  # noqa: E402


def timed_prepare(argv: list[str], tokens: int) -> float:
    t0 = time.perf_counter()
    if prepare_main([*argv, "--quiet", "--overwrite"]) != 0:
        raise SystemExit(f"data.prepare {' '.join(argv)} failed")
    return tokens / (time.perf_counter() - t0)


def make_loader(kind: str, paths: dict, seq_len: int, batch: int, workers: int, packing: str = "concat",
                dp_rank: int = 0, dp_size: int = 1):
    if kind == "shards":
        return ShardLoader(str(paths["shards"]), seq_len, batch, dp_rank, dp_size, seed=0, num_workers=workers,
                           packing=packing, dd_min_len=32)
    if kind == "megatron":
        return ShardLoader("", seq_len, batch, dp_rank, dp_size, seed=0, num_workers=workers, packing=packing,
                           dd_min_len=32, corpus=MegatronCorpus(str(paths["megatron"])), source="megatron")
    sources = [SourceConfig(path=str(paths["shards"]), weight=0.4, name="short"),
               SourceConfig(path=str(paths["megatron"]), format="megatron", weight=0.6, name="long",
                            long_doc_len=1024, long_doc_rate=2.0, short_doc_rate=0.5)]
    return MixtureLoader(sources, seq_len, batch, dp_rank, dp_size, seed=0, num_workers=workers,
                         log=lambda m: None)


def loader_tps(loader, seconds: float) -> float:
    for _ in range(8):                      # start the workers, fill the prefetch queue
        loader.next_batch()
    n_tok, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n_tok += loader.next_batch().tokens.numel()
    tps = n_tok / (time.perf_counter() - t0)
    loader.close()
    return tps


def trainer_tps(path: Path, steps: int, run_dir: Path) -> float:
    from train.config import load_config
    from train.loop import train

    cfg = load_config("configs/tiny.toml", [
        "--data.source=shards", f"--data.path={path}", f"--train.steps={steps}", f"--train.run_dir={run_dir}",
        "--train.log_every=1", "--checkpoint.every=0", "--checkpoint.save_final=false", "--checkpoint.resume=none",
        "--metrics.tensorboard=false"])
    lines: list[str] = []
    train(cfg, log=lines.append)
    per_step = [float(m.group(1).replace(",", "")) for line in lines
                if (m := re.search(r"\| ([\d,]+) tok/s/dev", line))]
    return statistics.median(per_step[3:])          # steady state: skip the first steps


class ShardReads:
    """Counts the bytes of every shard file the shard corpora read (wraps data.corpus.read_shard)."""

    def __init__(self):
        self.bytes = 0
        self._orig = corpus_module.read_shard

    def __enter__(self):
        def counted(path, *a, **k):
            self.bytes += Path(path).stat().st_size
            return self._orig(path, *a, **k)
        corpus_module.read_shard = counted
        return self

    def __exit__(self, *exc):
        corpus_module.read_shard = self._orig


def io_per_rank(kind: str, paths: dict, seq_len: int, batch: int, dp: int, epoch_tokens: int) -> float:
    """Mean over ranks of (bytes read) / (bytes of the tokens the rank consumed), over one global epoch."""
    steps = max(1, epoch_tokens // (dp * batch * seq_len))
    ratios = []
    for rank in range(dp):
        with ShardReads() as reads:
            ld = make_loader(kind, paths, seq_len, batch, 0, dp_rank=rank, dp_size=dp)
            reads.bytes = 0                  # opening reads nothing but the manifests; count the steps
            for _ in range(steps):
                ld.next_batch()
            corpora = getattr(ld, "corpora", [ld.corpus])
            read = reads.bytes + sum(getattr(c, "bytes_read", 0) for c in corpora)
        ratios.append(read / (steps * batch * seq_len * 2))     # uint16 tokens
    return statistics.mean(ratios)


def write_inputs(tmp: Path, docs: int) -> tuple[dict, list[tuple[str, float]], int]:
    import_indexed_dataset()                 # megatron-core's import (seconds) is not part of the writing
    rows = []
    t0 = time.perf_counter()
    m = write_synthetic_shards(tmp / "shards", docs, shard_tokens=1 << 20)
    tokens = m.tokens
    rows.append((f"data.prepare --synthetic {docs} → shards", tokens / (time.perf_counter() - t0)))
    rows.append((f"data.prepare --synthetic {docs} → shards (--workers 2)",
                 timed_prepare(["--synthetic", str(docs), "--output", str(tmp / "shards2"), "--workers", "2"],
                               tokens)))
    rows.append((f"data.prepare --synthetic {docs} --format megatron",
                 timed_prepare(["--synthetic", str(docs), "--output", str(tmp / "mega"), "--format", "megatron"],
                               tokens)))
    paths = {"shards": tmp / "shards", "megatron": tmp / "mega"}
    try:
        import datasets
    except ImportError:
        print("datasets is not installed: no --input-hf rows")
        return paths, rows, tokens
    from data.synthetic import synthetic_document

    datasets.disable_progress_bars()

    texts = [synthetic_document(1234, i, 400, 6000) for i in range(docs)]
    datasets.Dataset.from_dict({"text": texts}).to_parquet(str(tmp / "corpus.parquet"))
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    for workers in ("1", "2"):
        rows.append((f"data.prepare --input-hf corpus.parquet, byte (--workers {workers})",
                     timed_prepare(["--input-hf", str(tmp / "corpus.parquet"), "--output", str(tmp / "hf"),
                                    "--workers", workers], tokens)))
    tok = local_fast_tokenizer(tmp / "tok", texts[:200])
    if tok is not None:
        from data.tokenizer import get_tokenizer

        hf_tokens = sum(len(d) for d in get_tokenizer(f"hf:{tok}").encode_documents(texts))
        for workers in ("1", "2"):
            rows.append((f"data.prepare --input-hf corpus.parquet, hf:fast BPE (--workers {workers})",
                         timed_prepare(["--input-hf", str(tmp / "corpus.parquet"), "--output", str(tmp / "hf"),
                                        "--tokenizer", f"hf:{tok}", "--workers", workers], hf_tokens)))
    return paths, rows, tokens


def local_fast_tokenizer(directory: Path, texts: list[str]) -> Path | None:
    """A small byte-level BPE trained here (no download), saved as a transformers fast tokenizer."""
    try:
        import transformers
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    except ImportError:
        return None
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=4096, special_tokens=["<eos>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>").save_pretrained(directory)
    return directory


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--docs", type=int, default=3000)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seconds", type=float, default=3.0, help="measuring time per loader setting")
    p.add_argument("--train-steps", type=int, default=30)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"machine: {os.cpu_count()} CPU cores (shared), torch threads {os.environ['OMP_NUM_THREADS']}, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths, rows, tokens = write_inputs(tmp, args.docs)
        shape = f"B={args.batch_size}, T={args.seq_len}"
        for kind, packings in (("shards", ("concat", "dd")), ("megatron", ("concat", "dd")), ("mixture", ("concat",))):
            for packing in packings:
                for workers in (0, 1, 2):          # 0 = in the training process
                    ld = make_loader(kind, paths, args.seq_len, args.batch_size, workers, packing)
                    rows.append((f"loader {kind} {packing}, num_workers={workers} ({shape})",
                                 loader_tps(ld, args.seconds)))
        train = trainer_tps(paths["shards"], args.train_steps, tmp / "run")
        rows.append(("CPU trainer, configs/tiny.toml on these shards", train))
        width = max(len(r[0]) for r in rows)
        print(f"corpus: {tokens:,} tokens (byte tokenizer), load average {os.getloadavg()[0]:.1f} at the end\n")
        print(f"{'what':<{width}}  {'tokens/s':>12}  {'× trainer':>9}")
        print(f"{'-' * width}  {'-' * 12}  {'-' * 9}")
        for name, tps in rows:
            print(f"{name:<{width}}  {tps:>12,.0f}  {tps / train:>9.1f}")
        worst = min(tps for name, tps in rows if name.startswith("loader"))
        print(f"\nslowest loader setting / trainer = {worst / train:.1f}× (goal ≥ 10×)\n")
        print("I/O per rank: bytes read / bytes consumed, mean over ranks (one epoch over all ranks, concat)")
        print(f"{'source':<10}  {'dp=1':>8}  {'dp=2':>8}  {'dp=4':>8}")
        for kind in ("shards", "megatron", "mixture"):
            cells = [io_per_rank(kind, paths, args.seq_len, args.batch_size, dp, tokens) for dp in (1, 2, 4)]
            print(f"{kind:<10}  " + "  ".join(f"{c:>8.2f}" for c in cells))


if __name__ == "__main__":
    main()
