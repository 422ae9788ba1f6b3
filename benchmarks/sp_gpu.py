"""DistAttn on one GPU: the block kernels against a whole-block flash call, and how much
communication posted beside them slows the compute (issue 21's GPU timing).

    python benchmarks/sp_gpu.py                      # on a CUDA machine: both tables
    python benchmarks/sp_gpu.py --dry-run            # on a CPU (Triton interpreter), tiny shapes: the code path

Table 1, per block of n query and n key tokens (B=1, bf16): our block forward (Triton, LSE out)
plus our block backward (Triton dq and dk/dv kernels fed the final LSE and delta, as DistAttn's
backward runs), for a diagonal block (causal) and a fully visible one (the keys of an earlier
chunk), against the same attention through flash-attn when installed, else SDPA, forward and
backward by autograd; dq_rel_err = |dq − dq_ref| / |dq_ref| checks that both computed the same thing.
Times are CUDA events, median of --reps after --warmup calls.

Table 2, overlap: a rank's share of P-way DistAttn at sequence length T (its diagonal block
plus P/2 visible blocks of T/P tokens, forward and backward) timed alone, and again while a
second stream copies what the rank would receive meanwhile (the K/V of each visible block,
and its output and LSE, there and back through pinned host memory: a stand-in for the
network's DMA traffic). "slowdown" = with / without; 1.00 means the communication hides
completely behind compute.
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's packages, not benchmarks/kernels.py

from parallel.sequence.blockwise import block_backward, block_forward, row_delta  # noqa: E402


def block_call(q, k, v, do, q_offset: int, k_offset: int):
    """Forward then backward of one DistAttn block, its own LSE standing for the merged one."""
    kw = dict(window=None, q_docs=None, k_docs=None, q_offset=q_offset, k_offset=k_offset,
              scale=q.shape[-1] ** -0.5)
    o, lse = block_forward(q, k, v, **kw)
    return block_backward(q, k, v, do, lse, row_delta(o, do), **kw)


def reference_call(q, k, v, do, causal: bool):
    """The same attention through flash-attn (if installed) or SDPA, forward + backward by autograd."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    try:
        from flash_attn import flash_attn_func

        o = flash_attn_func(q, k, v, causal=causal)
    except ImportError:
        o = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal).transpose(1, 2)
    o.backward(do)
    return q.grad


def reference_name() -> str:
    try:
        import flash_attn  # noqa: F401

        return "flash-attn"
    except ImportError:
        return "SDPA"


def timed(fn, warmup: int, reps: int) -> float:
    """Median milliseconds of fn (CUDA events on a GPU, wall clock on a CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            import time

            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def inputs(n: int, heads: int, kv_heads: int, d: int, device, dtype, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    make = lambda h: torch.randn(1, n, h, d, generator=g).to(device, dtype)  # noqa: E731
    return make(heads), make(kv_heads), make(kv_heads), make(heads)


def block_rows(args, device, dtype) -> list[dict]:
    rows = []
    for n in args.block_tokens:
        q, k, v, do = inputs(n, args.heads, args.kv_heads, args.head_dim, device, dtype)
        kv_rep = args.heads // args.kv_heads
        k_full, v_full = k.repeat_interleave(kv_rep, 2), v.repeat_interleave(kv_rep, 2)
        for kind, q_off, causal in (("diagonal", 0, True), ("visible", n, False)):
            ours = timed(functools.partial(block_call, q, k, v, do, q_off, 0), args.warmup, args.reps)
            ref = timed(functools.partial(reference_call, q, k_full, v_full, do, causal), args.warmup, args.reps)
            dq, dq_ref = block_call(q, k, v, do, q_off, 0)[0].float(), reference_call(q, k_full, v_full, do, causal)
            err = ((dq - dq_ref.float()).norm() / dq_ref.float().norm()).item()
            rows.append(dict(n=n, block=kind, ours_ms=ours, ref_ms=ref, ratio=ours / ref, dq_rel_err=f"{err:.1e}"))
    return rows


def rank_share(q, ks, vs, do):
    """One rank's DistAttn compute: the diagonal block, then each visible block (forward + backward)."""
    block_call(q, ks[0], vs[0], do, 0, 0)
    n = q.shape[1]
    for k, v in zip(ks[1:], vs[1:]):
        block_call(q, k, v, do, n, 0)


def post_copies(payload, host, times: int, side, compute) -> None:
    """`compute` on the current stream while `side` copies payload to pinned host memory and back
    `times` times (the rank's incoming and outgoing messages, as DMA traffic beside the kernels)."""
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(times):
            host.copy_(payload, non_blocking=True)
            payload.copy_(host, non_blocking=True)
    compute()
    torch.cuda.current_stream().wait_stream(side)


def overlap_rows(args, device, dtype) -> list[dict]:
    rows = []
    for world in args.worlds:
        n = args.seq_len // world
        q, k, v, do = inputs(n, args.heads, args.kv_heads, args.head_dim, device, dtype)
        visible = max(world // 2, 1)
        ks, vs = [k] * (visible + 1), [v] * (visible + 1)
        alone = timed(functools.partial(rank_share, q, ks, vs, do), args.warmup, args.reps)
        if device.type != "cuda":
            rows.append(dict(world=world, n=n, alone_ms=alone, with_comm_ms=alone, slowdown=1.0))
            continue
        payload = torch.cat([k, v, q, do], dim=2).contiguous()            # K/V in, output + stats out
        comm = functools.partial(post_copies, payload, torch.empty(payload.shape, dtype=payload.dtype,
                                 pin_memory=True), visible, torch.cuda.Stream())
        both = timed(lambda: comm(functools.partial(rank_share, q, ks, vs, do)), args.warmup, args.reps)  # noqa: B023
        rows.append(dict(world=world, n=n, alone_ms=alone, with_comm_ms=both, slowdown=both / alone))
    return rows


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--block-tokens", type=lambda s: [int(x) for x in s.split(",")], default=[2048, 4096, 8192])
    p.add_argument("--seq-len", type=int, default=65536, help="overlap table: the global sequence length T")
    p.add_argument("--worlds", type=lambda s: [int(x) for x in s.split(",")], default=[2, 4, 8])
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny shapes: the code path only")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        os.environ["LONGWEAVE_KERNELS"] = "triton"
        args.block_tokens, args.seq_len, args.worlds = [32], 64, [2]
        args.heads, args.kv_heads, args.head_dim, args.warmup, args.reps = 2, 1, 16, 0, 1
        device, dtype = torch.device("cpu"), torch.float32
    elif torch.cuda.is_available():
        device, dtype = torch.device("cuda"), torch.bfloat16
    else:
        print("sp_gpu.py needs a CUDA device (or --dry-run on a CPU)", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (interpreter)"
    print(f"device {name}; B=1, H={args.heads}, Hkv={args.kv_heads}, d={args.head_dim}, {dtype}")
    print_table(f"block kernels, forward + backward (ours: Triton blocks; reference: {reference_name()})",
                block_rows(args, device, dtype))
    print_table(f"overlap: one rank's DistAttn share at T={args.seq_len}, alone and with communication posted",
                overlap_rows(args, device, dtype))
    return 0


if __name__ == "__main__":
    sys.exit(main())
