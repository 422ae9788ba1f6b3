"""Forward+backward tokens/s versus sequence length for `*`, `W`, `M` and `R` tiny stacks.

    python benchmarks/scaling.py [--lengths 1024 4096 16384] [--repeats 3] [--threads N] [--device cpu]

Each stack is two (mixer, MLP) pairs at d_model 128; one row of T tokens per step (batch 1),
so every length processes the same work per token except the mixer's. The figure is the best
of `repeats` timed steps after one warm-up step (min, because the machine may be shared), and
the ratio is tokens/s at T = 1K over tokens/s at T (1.0 = flat; linear-time mixers should stay
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
}


def time_step(model: torch.nn.Module, t: int, device: torch.device, repeats: int) -> float:
    """Best wall time (s) of one forward+backward over a [1, t] batch."""
    tokens = torch.randint(0, model.cfg.vocab_size, (1, t), device=device)
    best = float("inf")
    for i in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        logits = model(tokens)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten()).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i > 0:                                   # the first step warms up allocators and caches
            best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--stacks", nargs="+", default=list(STACKS))
    p.add_argument("--repeats", type=int, default=3)
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
    for name in args.stacks:
        torch.manual_seed(0)
        cfg = models.ModelConfig(d_model=128, n_heads=4, n_kv_heads=2, **STACKS[name])
        model = models.build(cfg).to(device)
        n_params = sum(q.numel() for q in model.parameters())
        rates = [t / time_step(model, t, device, args.repeats) for t in args.lengths]
        cells = [f"{r:,.0f}" for r in rates] + [f"{rates[0] / r:.2f}" for r in rates[1:]]
        print(f"| {name} | {cfg.pattern} | {n_params / 1e6:.2f}M | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
