"""Forward+backward tokens/s versus sequence length for `*`, `W`, `M` and `R` tiny stacks.

    python benchmarks/scaling.py [--lengths 1024 4096 16384] [--rounds 3] [--min-time 2] [--threads N] [--device cpu]

Each stack is two (mixer, MLP) pairs at d_model 128; one row of T tokens per step (batch 1),
so every length processes the same work per token except the mixer's. The figure is the best
step time over interleaved rounds after a warm-up step (min, because the machine may be
shared; see `measure`), and the ratio is tokens/s at T = 1K over tokens/s at T (1.0 = flat; linear-time mixers should stay
near 1, global attention's cost per token grows with T).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

# `python benchmarks/scaling.py` puts benchmarks/ first on sys.path, where a script may share a
# package's name (benchmarks/kernels.py vs the kernels package): import from the repo root.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import torch  # noqa: E402

import models  # noqa: E402

STACKS = {
    "*": dict(pattern="(*-)x2"),
    "W": dict(pattern="(W-)x2", window=256),
    "M": dict(pattern="(M-)x2", d_state=64, ssm_headdim=32, ssm_chunk_size=64),
    "R": dict(pattern="(R-)x2"),
    "-": dict(pattern="--"),   # control: MLPs only, no mixer; its ratio is the machine's own T effect
}


def time_step(model: torch.nn.Module, tokens: torch.Tensor) -> float:
    """Wall time (s) of one forward+backward over tokens [1, T]."""
    model.zero_grad(set_to_none=True)
    if tokens.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    logits = model(tokens)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten()).backward()
    if tokens.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(built: dict, lengths: list[int], device: torch.device, rounds: int, min_time: float) -> dict:
    """Best step time per (stack, T). Rounds interleave every (stack, T) pair, so a burst of load
    from other processes on a shared machine hits all of them alike; inside a round a pair is
    timed repeatedly for at least min_time seconds (short steps get many samples)."""
    best = {(n, t): float("inf") for n in built for t in lengths}
    inputs = {t: torch.randint(0, 260, (1, t), device=device) for t in lengths}
    for model in built.values():                    # warm-up: allocator, caches, lazy inits
        for t in lengths:
            time_step(model, inputs[t])
    for _ in range(rounds):
        for n, model in built.items():
            for t in lengths:
                spent = 0.0
                while spent < min_time or spent == 0.0:
                    dt = time_step(model, inputs[t])
                    best[n, t] = min(best[n, t], dt)
                    spent += dt
    return best


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--stacks", nargs="+", default=list(STACKS))  # "-" = MLP-only control
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-time", type=float, default=2.0, help="seconds of timed steps per pair per round")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"machine: {platform.processor() or platform.machine()} ({device.type}), "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print("| stack | pattern | params | " + " | ".join(f"T={t} tok/s" for t in args.lengths) + " | "
          + " | ".join(f"ratio 1K/{t // 1024}K" for t in args.lengths[1:]) + " |")
    print("|---|---|---|" + "---|" * (2 * len(args.lengths) - 1))
    built, params = {}, {}
    for name in args.stacks:
        torch.manual_seed(0)
        cfg = models.ModelConfig(d_model=128, n_heads=4, n_kv_heads=2, **STACKS[name])
        built[name] = models.build(cfg).to(device)
        params[name] = sum(q.numel() for q in built[name].parameters())
    best = measure(built, args.lengths, device, args.rounds, args.min_time)
    for name, model in built.items():
        rates = [t / best[name, t] for t in args.lengths]
        cells = [f"{r:,.0f}" for r in rates] + [f"{rates[0] / r:.2f}" for r in rates[1:]]
        print(f"| {name} | {model.cfg.pattern} | {params[name] / 1e6:.2f}M | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
