"""DistAttn against DeepSpeed-Ulysses, side by side on gloo CPU: same inputs, fwd+bwd time of the
slowest rank and forward bytes sent per rank.

    python benchmarks/sp_vs_ulysses.py [--worlds 2,4] [--seq-lens 2048,8192] [--docs none,packed]

One attention call, B=1, H=8 heads of 64 (GQA off: Ulysses refuses kv heads < P), fp32, causal.
Ulysses is deepspeed.sequence.layer.DistributedAttention (all-to-all of heads) around our local
kernel (kernels.attention.attention: the CPU flash kernel, per-document pieces for packed
documents), so both sides use the same compute kernel. Ours is parallel.sequence's DistAttn.
Each rank runs both alternately, one untimed warm-up, then `--reps` timed calls each; a call's
time is the slowest rank's, the figure the median over calls. Bytes: ours measured by the
P2P counter; Ulysses' forward is 4 all-to-alls of (P−1)/P of a [N/P, H, D] tensor (q, k, v, out).
Units: N·d = sequence tokens × H·D fp32 elements. One thread per rank, set explicitly.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from benchmarks_common import run_ranks  # noqa: E402

H, D = 8, 64


def packed_docs(t: int) -> torch.Tensor:
    """Documents of ~T/8 tokens with random boundaries (fixed seed), one row."""
    gen = torch.Generator().manual_seed(3)
    cuts = torch.rand(1, t, generator=gen) < 8 / t
    cuts[:, 0] = False
    return cuts.cumsum(1)


def worker(rank: int, world: int, args) -> dict:
    import torch.distributed as dist

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    from deepspeed.sequence.layer import DistributedAttention

    from kernels.attention import attention
    from parallel.sequence.chunks import ChunkLayout
    from parallel.sequence.distattn import CallRecord, dist_attention
    from parallel.sequence.p2p import SPGroup

    t, n = args.seq_len, args.seq_len // world
    gen = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(1, t, H, D, generator=gen) for _ in range(4))
    sl = slice(rank * n, (rank + 1) * n)
    docs = packed_docs(t) if args.layout == "packed" else None
    deepspeed.init_distributed(dist_backend="gloo")      # adopts the torch process group already set up
    group = SPGroup()
    group.warmup()
    chunks = ChunkLayout(world, rank, n, None if docs is None else [docs[:, i * n:(i + 1) * n] for i in range(world)])

    def local(qh, kh, vh, *_, **__):
        return attention(qh, kh, vh, causal=True, q_doc_ids=docs, k_doc_ids=docs)

    ulysses = DistributedAttention(local, dist.group.WORLD, scatter_idx=2, gather_idx=1)
    record = CallRecord()

    def ours():
        x = [z[:, sl].clone().requires_grad_(True) for z in (q, k, v)]
        dist_attention(*x, group=group, chunks=chunks, record=record).backward(do[:, sl])

    def theirs():
        x = [z[:, sl].clone().requires_grad_(True) for z in (q, k, v)]
        ulysses(*x, 0).backward(do[:, sl])

    with torch.no_grad():                                 # same inputs, same answer (fp32 round-off)
        x = [z[:, sl] for z in (q, k, v)]
        gap = (dist_attention(*x, group=group, chunks=chunks) - ulysses(*x, 0)).abs().max()
        assert gap < 1e-4, f"DistAttn and Ulysses disagree by {gap:.2e}"
    times = {"ours": [], "ulysses": []}
    for rep in range(args.reps + 1):
        for name, fn in (("ours", ours), ("ulysses", theirs))[:: 1 if rep % 2 else -1]:
            dist.barrier()
            t0 = time.perf_counter()
            fn()
            if rep:
                times[name].append(time.perf_counter() - t0)
    fwd_bytes = record.fwd_bytes // (args.reps + 1)            # the record sums every timed call
    return {"times": times, "fwd_bytes": fwd_bytes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worlds", default="2,4")
    ap.add_argument("--seq-lens", default="2048")
    ap.add_argument("--docs", default="none,packed")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    print(f"# gloo CPU, 1 thread per rank, B=1, H={H}, head_dim={D}, fp32, causal, median of {args.reps} "
          f"(slowest rank per call); machine shared with other jobs: ratios matter, not seconds")
    from parallel.sequence.schedule import rank_work

    print("| P | " + " | ".join(str(w) for w in range(2, 9)) + " |\n|---|" + "---|" * 7)
    print("| busiest rank / mean (causal blocks, schedule) | "
          + " | ".join(f"{max(rank_work(w)) / (sum(rank_work(w)) / w):.2f}" for w in range(2, 9)) + " |\n")
    print("| P | T | documents | ours fwd+bwd s | Ulysses s | ours / Ulysses | fwd bytes/rank (N·d) ours / Ulysses |")
    print("|---|---|---|---|---|---|---|")
    for t in (int(x) for x in args.seq_lens.split(",")):
        for world in (int(x) for x in args.worlds.split(",")):
            for layout in args.docs.split(","):
                args.seq_len, args.layout = t, layout
                res = run_ranks(world, worker, args)
                med = {name: statistics.median(max(r["times"][name][i] for r in res) for i in range(args.reps))
                       for name in ("ours", "ulysses")}
                nd = t * H * D * 4
                ours_b = max(r["fwd_bytes"] for r in res) / nd
                uly_b = 4 * (world - 1) / world * (t // world) * H * D * 4 / nd
                print(f"| {world} | {t} | {layout} | {med['ours']:.3f} | {med['ulysses']:.3f} "
                      f"| {med['ours'] / med['ulysses']:.2f}x | {ours_b:.2f} / {uly_b:.2f} |", flush=True)


if __name__ == "__main__":
    main()
