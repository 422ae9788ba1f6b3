"""Training throughput of a recipe on this machine: tokens/s per device over steady-state steps.

    python benchmarks/train_throughput.py [--config configs/tiny.toml] [--steps 40] [overrides...]

Runs the real trainer (no checkpoints, no TensorBoard) and times the steps after a warm-up,
printing one table row. `measure` is also what benchmarks/parallel_layouts.py runs on every rank.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's packages, not benchmarks/kernels.py

import torch  # noqa: E402

from train.config import load_config  # noqa: E402
from train.loop import train  # noqa: E402


def measure(config: str, steps: int, warmup: int, overrides: list[str]):
    """(seconds per steady-state step, tokens/s per device, resolved config); rank 0's timings."""
    stamps: list[float] = []

    def log(line: str) -> None:
        if line.startswith("step"):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(config, [f"--train.steps={steps}", f"--train.run_dir={tmp}", "--train.log_every=1",
                                   "--checkpoint.every=0", "--checkpoint.save_final=false",
                                   "--checkpoint.resume=none", "--metrics.tensorboard=false", *overrides])
        train(cfg, log=log)
    if len(stamps) < warmup + 2:
        return None, None, cfg
    timed = stamps[warmup:]
    per_step = (timed[-1] - timed[0]) / (len(timed) - 1)
    p = cfg.parallel
    tokens = cfg.data.batch_size * cfg.data.seq_len * cfg.train.grad_accum
    return per_step, tokens / per_step / (p.tp * p.pp * p.sp), cfg


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/tiny.toml")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    args, rest = p.parse_known_args()
    per_step, tps, cfg = measure(args.config, args.steps, args.warmup, rest)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads")
    print("| recipe | pattern | T | batch | ms/step | tokens/s |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.config} | {cfg.model.pattern} | {cfg.data.seq_len} | {cfg.data.batch_size} "
          f"| {per_step * 1e3:.1f} | {tps:,.0f} |")


if __name__ == "__main__":
    main()
