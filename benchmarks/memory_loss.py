"""Peak memory of one training forward + backward with the plain and the chunked cross-entropy.

    python benchmarks/memory_loss.py [--vocab 32000] [--seq-len 2048] [--batch 1] [--d-model 256]
                                     [--chunks 0,1024,256,64]

A small Transformer ((*-)x2) on CPU, one thread. Peak memory is the StorageTracker's peak of
live tensor bytes created during the step (train/plan_measure.py: parameters excluded,
gradients included), so it is exact and independent of the machine's load; the planner's
prediction of the same quantity (activations + logits + gradients) is printed beside it. Chunk 0
is the plain loss, which holds the [B, T, vocab] logits and the cross-entropy's fp32 copies.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's packages, not benchmarks/kernels.py

import torch  # noqa: E402

import models  # noqa: E402
from parallel.loss import apply_chunked_loss, token_loss_sum  # noqa: E402
from train.config import load_config  # noqa: E402
from train.plan_measure import StorageTracker  # noqa: E402
from train.plan_memory import make_plan  # noqa: E402


def measure(cfg) -> tuple[float, float, float]:
    """(measured peak bytes, planned bytes, seconds) of one forward + backward."""
    torch.manual_seed(0)
    model = models.build(cfg.model)
    b, t, v = cfg.data.batch_size, cfg.data.seq_len, cfg.model.vocab_size
    tokens, labels = torch.randint(0, v, (b, t)), torch.randint(0, v, (b, t))
    chunk = cfg.train.loss_chunk
    if chunk:
        apply_chunked_loss(model, chunk)
        model.loss_labels = labels
    t0 = time.perf_counter()
    with StorageTracker() as tracker:
        loss = model(tokens) if chunk else token_loss_sum(model(tokens), labels)
        loss.backward()
    seconds = time.perf_counter() - t0
    plan = make_plan(cfg, 1, None)
    return tracker.peak, plan.activations + plan.logits + plan.terms["recompute"] + plan.terms["gradients"], seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--chunks", default="0,1024,256,64")
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread; model (*-)x2, "
          f"d_model {args.d_model}, vocab {args.vocab}, batch {args.batch} x {args.seq_len} tokens")
    print("| loss | chunk (tokens) | measured peak MiB | planned MiB | peak vs plain | seconds |")
    print("|---|---|---|---|---|---|")
    plain = None
    for chunk in (int(c) for c in args.chunks.split(",")):
        cfg = load_config(None, ["--model.pattern=(*-)x2", f"--model.d_model={args.d_model}", "--model.n_heads=4",
                                 f"--model.vocab_size={args.vocab}", f"--data.seq_len={args.seq_len}",
                                 f"--data.batch_size={args.batch}", f"--train.loss_chunk={chunk}"])
        peak, planned, seconds = measure(cfg)
        plain = plain or peak
        name = "chunked" if chunk else "plain"
        print(f"| {name} | {chunk or '-'} | {peak / 2**20:.1f} | {planned / 2**20:.1f} | {peak / plain:.3f} | "
              f"{seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
