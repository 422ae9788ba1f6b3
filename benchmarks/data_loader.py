"""Data pipeline throughput: shard writing, the streaming loader (1 and 2 workers), and the CPU trainer.

    python benchmarks/data_loader.py [--docs 3000] [--seq-len 256] [--batch-size 8] [--train-steps 30]

Writes the synthetic corpus as shards (timing `data.prepare` with 1 and 2 workers), then
measures loader tokens/s for concat packing and Dataset Decomposition with num_workers 1 and 2,
and the tokens/s the tiny CPU model (configs/tiny.toml) consumes on the same shards. The goal
is loader ≥ 10× what training consumes, so data never stalls a step.
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

from data.prepare import write_synthetic_shards  # noqa: E402
from data.stream import ShardLoader  # noqa: E402


def time_prepare(out: Path, docs: int, workers: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    m = write_synthetic_shards(out, docs, shard_tokens=1 << 20, workers=workers)
    return m.tokens / (time.perf_counter() - t0), m.tokens


def loader_tps(path: Path, seq_len: int, batch: int, workers: int, packing: str, seconds: float) -> float:
    ld = ShardLoader(str(path), seq_len, batch, seed=0, num_workers=workers, packing=packing, dd_min_len=32)
    for _ in range(8):                      # start the workers, fill the prefetch queue
        ld.next_batch()
    n_tok, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n_tok += ld.next_batch().tokens.numel()
    tps = n_tok / (time.perf_counter() - t0)
    ld.close()
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--docs", type=int, default=3000)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seconds", type=float, default=3.0, help="measuring time per loader setting")
    p.add_argument("--train-steps", type=int, default=30)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"machine: {os.cpu_count()} CPU cores (shared), torch threads {os.environ['OMP_NUM_THREADS']}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = []
        for workers in (1, 2):
            tps, tokens = time_prepare(tmp / f"shards{workers}", args.docs, workers)
            rows.append((f"data.prepare --synthetic {args.docs} (--workers {workers})", tps))
        shards = tmp / "shards1"
        for packing in ("concat", "dd"):
            for workers in (0, 1, 2):                  # 0 = in the training process (for reference)
                rows.append((f"loader {packing}, num_workers={workers} (B={args.batch_size}, T={args.seq_len})",
                             loader_tps(shards, args.seq_len, args.batch_size, workers, packing, args.seconds)))
        train = trainer_tps(shards, args.train_steps, tmp / "run")
        rows.append(("CPU trainer, configs/tiny.toml on these shards", train))
        width = max(len(r[0]) for r in rows)
        print(f"corpus: {tokens:,} tokens (byte tokenizer)\n")
        print(f"{'what':<{width}}  {'tokens/s':>12}  {'× trainer':>9}")
        print(f"{'-' * width}  {'-' * 12}  {'-' * 9}")
        for name, tps in rows:
            print(f"{name:<{width}}  {tps:>12,.0f}  {tps / train:>9.1f}")
        worst = min(tps for name, tps in rows if name.startswith("loader") and "num_workers=0" not in name)
        print(f"\nslowest loader setting / trainer = {worst / train:.1f}× (goal ≥ 10×)")


if __name__ == "__main__":
    main()
