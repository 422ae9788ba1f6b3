"""Tokens/s per device of a recipe under several parallel layouts (torchrun, one process per device).

    python benchmarks/parallel_layouts.py [--config configs/hybrid-tiny.toml] [--steps 15] [--warmup 3]

For each layout (1 process, dp2, tp2, pp2 by default) it launches torchrun, runs the real
trainer without checkpoints or TensorBoard, times the steady-state steps on rank 0 and prints
one table row: tokens per step of one data-parallel replica / step time / (tp·pp·sp), the
figure the trainer logs as tok/s/dev and uses for MFU.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {"1": (1, []), "dp2": (2, []), "tp2": (2, ["--parallel.tp=2"]), "pp2": (2, ["--parallel.pp=2"])}


def worker(args, rest: list[str]) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from train_throughput import measure

    per_step, tps, _ = measure(args.config, args.steps, args.warmup, rest)
    if per_step is not None:
        print(f"RESULT {tps:.1f} {per_step:.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/hybrid-tiny.toml")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--worker", action="store_true")
    args, rest = ap.parse_known_args()
    if args.worker:
        return worker(args, rest)
    print(f"{args.config} on {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"gloo, OMP_NUM_THREADS=1 per process, {args.steps} steps ({args.warmup} warm-up)")
    print("| layout | processes | step time (s) | tokens/s per device |\n|---|---|---|---|")
    for name in args.layouts.split(","):
        nproc, extra = LAYOUTS[name]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               str(Path(__file__).resolve()), "--worker", "--config", args.config,
               "--steps", str(args.steps), "--warmup", str(args.warmup), *extra, *rest]
        out = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                             capture_output=True, text=True)
        found = [ln.split() for ln in out.stdout.splitlines() if ln.startswith("RESULT")]
        if out.returncode or not found:
            print(f"| {name} | {nproc} | failed: {out.stderr.strip().splitlines()[-1:]} | |")
            continue
        tps, step = found[0][1], found[0][2]
        print(f"| {name} | {nproc} | {step} | {float(tps):,.0f} |", flush=True)


if __name__ == "__main__":
    main()
