"""Trainer tokens/s with the default thread policy vs one thread vs every core, under CPU load.

    python benchmarks/threads.py [--config configs/tiny.toml] [--steps 12] [--rounds 2] [--load N]

Starts N busy processes (default: one per usable core) so the machine is as busy as a shared
one, then times the real trainer with each thread setting, interleaved over rounds (best round
kept), and prints tokens/s and the ratio to the best setting. "default" is what
`python -m train` picks (train/threads.py) under that load.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's packages, not benchmarks/kernels.py

import torch  # noqa: E402

from benchmarks.train_throughput import measure  # noqa: E402
from train.threads import choose_threads, usable_cores  # noqa: E402


def _spin(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(10000):
            x += 1


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/tiny.toml")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--load", type=int, default=0, help="busy processes to start (0 = one per usable core)")
    args, rest = p.parse_known_args()
    cores = usable_cores()
    stop = mp.Event()
    load = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.load or cores)]
    for proc in load:
        proc.start()
    try:
        time.sleep(1.0)
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        default = choose_threads(0, env=env)
        settings = {f"default ({default.threads})": default.threads, "1 thread": 1, f"all cores ({cores})": cores}
        best: dict[str, float] = {}
        for _ in range(args.rounds):
            for name, n in settings.items():
                torch.set_num_threads(n)
                _, tps, _ = measure(args.config, args.steps, args.warmup, ["--train.device=cpu", *rest])
                best[name] = max(best.get(name, 0.0), tps or 0.0)
    finally:
        stop.set()
        for proc in load:
            proc.join(timeout=5)
    top = max(best.values())
    print(f"machine: {platform.machine()}, {cores} usable cores, {len(load)} busy processes started, "
          f"load average {os.getloadavg()[0]:.1f}; {args.config}, best of {args.rounds} rounds")
    print(f"policy under load: {default.line()}")
    print("| threads | tokens/s | best / this |")
    print("|---|---|---|")
    for name, tps in best.items():
        print(f"| {name} | {tps:,.0f} | {top / tps if tps else float('inf'):.2f} |")


if __name__ == "__main__":
    main()
