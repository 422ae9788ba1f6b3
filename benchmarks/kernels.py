# ruff: noqa: B023  (closures are timed inside the loop iteration that made them)
"""Kernel benchmark (GPU): prints tables of measured figures for our fused kernels vs baselines.

  python benchmarks/kernels.py [--quick] [--only attention,ssd,ssd_tiles,scan,scan_tiles,gated,conv] [--profile]
                               [--json PATH]      (GPU)
  python benchmarks/kernels.py --dry-run | --static    (no GPU: list the cases | offline sm_90 resources)

- attention, causal, bf16, d=128, fwd+bwd TFLOP/s (FLOPs: fwd 2·2·B·H·T²·d / 2 for causal,
  bwd 2.5× fwd), ours (Triton) vs torch SDPA with the flash backend and flash-attn if importable;
- SSD fwd+bwd time at T up to 256K, ours (Triton) with both backward variants (fused, split:
  LONGWEAVE_SSD_BWD) vs mamba-ssm's `mamba_chunk_scan_combined` (if importable; its
  SSD kernels are pure Triton, so a wheel built with MAMBA_SKIP_CUDA_BUILD=TRUE works) and vs our
  torch-chunked path (T <= 16K: its Python loop over chunks makes longer runs slow to time);
- RG-LRU linear scan achieved GB/s (forward: read a, x, write h; backward: read a, h, dh, write
  da, dx) vs a device-to-device copy (read + write) measured in the same run, both kernels (tiled,
  lookback: LONGWEAVE_SCAN) up to T = 256K, and the lookback kernel's block shapes side by side;
- --profile: CUDA time per kernel, achieved bandwidth of each op and pass vs copy, and registers,
  spills, shared memory and resident programs per SM of each compiled Triton kernel
  (benchmarks/kernel_profile.py);
- causal conv1d fwd+bwd time, ours (Triton) vs the torch path.
Timing: triton.testing.do_bench (CUDA events, median), random inputs, after warm-up.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import traceback

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
# the checkout's packages first (a script's own folder comes first otherwise, and this file would
# shadow the `kernels` package), then the sibling modules
sys.path[:0] = [os.path.dirname(HERE), HERE]

from kernel_profile import bench, fwd_bwd  # noqa: E402
from kernel_rows import (  # noqa: E402
    SCAN_TILES,
    SPLIT_TILES,
    gated_rows,
    profile_tables,
    scan_rows,
    scan_tile_rows,
    ssd_rows,
    ssd_tile_rows,
)


def attention_rows(seqlens, heads=16, d=128, tokens=65536):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from kernels.attention.triton import attention_triton
    flash = None
    if importlib.util.find_spec("flash_attn") is not None:
        from flash_attn import flash_attn_func as flash
    rows = []
    for t in seqlens:
        b = max(1, tokens // t)
        q, k, v = (torch.randn(b, t, heads, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        do = torch.randn_like(q)
        flops_fwd = 4 * b * heads * t * t * d / 2
        ours = bench(fwd_bwd(lambda q, k, v: attention_triton(q, k, v, causal=True)[0], (q, k, v), (do,)))
        ours_f = bench(lambda: attention_triton(q, k, v, causal=True))
        qt, kt, vt = (x.detach().transpose(1, 2).requires_grad_() for x in (q, k, v))
        dot = do.transpose(1, 2)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            sdpa = bench(fwd_bwd(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                                 (qt, kt, vt), (dot,)))
            sdpa_f = bench(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True))
        fa = bench(fwd_bwd(lambda q, k, v: flash(q, k, v, causal=True), (q, k, v), (do,))) if flash else None
        tf = lambda ms, mult: mult * flops_fwd / ms / 1e9  # noqa: E731
        rows.append(dict(T=t, B=b, ours_fwdbwd_tflops=tf(ours, 3.5), sdpa_fwdbwd_tflops=tf(sdpa, 3.5),
                         flash_attn_fwdbwd_tflops=tf(fa, 3.5) if fa else None, ours_fwd_tflops=tf(ours_f, 1),
                         sdpa_fwd_tflops=tf(sdpa_f, 1), ratio_vs_sdpa=sdpa / ours))
    from kernels.attention import triton as attn_triton
    for key, kern in attn_triton._KERNELS.items():  # chosen block shapes, to keep the config lists short
        print(f"attention autotune {key}: {getattr(kern, 'best_config', None)}")
    return rows


def conv_rows(shapes):
    from kernels.conv1d import causal_conv1d_torch
    from kernels.conv1d.triton import causal_conv1d_triton
    rows = []
    for b, t, c in shapes:
        x = torch.randn(b, t, c, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        w = torch.randn(c, 4, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        doc = torch.sort(torch.randint(0, 8, (b, t), device="cuda"), 1).values
        dy = (torch.randn_like(x),)
        row = dict(shape=f"{b}x{t}x{c}")
        for name, fn in (("ours_ms", causal_conv1d_triton), ("torch_ms", causal_conv1d_torch)):
            row[name] = bench(fwd_bwd(lambda x, w: fn(x, w, doc_ids=doc, activation="silu"), (x, w), dy))
        rows.append(row)
    return rows


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    if not rows:
        return
    cols = list(rows[0])
    fmt = lambda v: "-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))  # noqa: E731
    widths = [max(len(c), *(len(fmt(r[c])) for r in rows)) for c in cols]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(fmt(r[c]).ljust(w) for c, w in zip(cols, widths)) + " |")


def sections(args) -> list[tuple[str, str, object, object]]:
    """(key, title, cases, rows(cases)) of every section, in order."""
    q = args.quick
    lens = [8192] if q else [8192, 16384, 32768, 65536]
    ssd_lens = [4096] if q else [int(v) for v in args.ssd_lengths.split(",")]
    scan = [(4, 4096, 2560)] if q else [(4, 4096, 2560), (8, 8192, 2560), (1, 131072, 2560), (1, 262144, 2560)]
    tiles = [(4, 4096, 2560)] if q else [(8, 8192, 2560), (1, 262144, 2560)]
    return [
        ("attention", "attention causal bf16 d=128 H=16 (B*T = 64K tokens), TFLOP/s", lens, attention_rows),
        ("ssd", "SSD bf16, B=1 H=32 P=64 N=128 G=1, fwd+bwd ms, our fused and split backward "
         "(mamba-ssm chunk 256, ours chunk 64; split128: the split backward at chunk 128)", ssd_lens, ssd_rows),
        ("ssd_tiles", f"split SSD backward launch shapes {SPLIT_TILES} (dx warps, dB/dC columns, warps), "
         "fwd+bwd ms", [4096] if q else [65536, 262144], ssd_tile_rows),
        ("scan", "RG-LRU linear scan bf16, tiled and lookback kernels, GB/s and fraction of device copy", scan,
         scan_rows),
        ("scan_tiles", f"lookback scan block shapes (T x D, warps) {SCAN_TILES}, fraction of device copy", tiles,
         scan_tile_rows),
        ("gated", "RG-LRU from gate pre-activations bf16 c=8: fused Triton vs torch gates + tiled scan", scan[:2] +
         scan[3:], gated_rows),
        ("conv", "causal conv1d k=4 + SiLU + doc resets, fwd+bwd bf16, ms", [(4, 8192, 4096)], conv_rows),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smallest sizes only (a smoke run)")
    ap.add_argument("--only", default="attention,ssd,ssd_tiles,scan,scan_tiles,gated,conv", help="comma-separated sections")
    ap.add_argument("--ssd-lengths", default="4096,16384,65536,131072,262144", help="SSD sequence lengths")
    ap.add_argument("--profile", action="store_true",
                    help="also print per-kernel CUDA time, achieved bandwidth vs copy and kernel resources")
    ap.add_argument("--profile-t", type=int, default=65536, help="SSD length for --profile")
    ap.add_argument("--static", action="store_true",
                    help="only print registers/spills/shared memory per kernel from an offline sm_90 compile (no GPU)")
    ap.add_argument("--dry-run", action="store_true", help="list the sections and cases, run nothing")
    ap.add_argument("--json", default=None, help="also write all rows to this JSON file")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    known = [key for key, *_ in sections(args)]
    if only - set(known):
        print(f"--only: unknown section(s) {', '.join(sorted(only - set(known)))}; choose from {', '.join(known)}")
        return 2
    if args.dry_run:
        for key, title, cases, _ in sections(args):
            if key in only:
                print(f"{key}: {title}\n  cases: {cases}")
        if args.profile:
            print(f"profile: SSD T={args.profile_t}, scan {sections(args)[3][2][:2]}, both variants each")
        return 0
    if args.static:
        if os.environ.get("TRITON_INTERPRET") == "1":
            print("--static compiles for a GPU: unset TRITON_INTERPRET")
            return 2
        from kernel_profile import static_rows
        print_table("offline sm_90 compile (Triton, ptxas): per kernel", static_rows(SPLIT_TILES, SCAN_TILES))
        return 0
    if not torch.cuda.is_available():
        print("benchmarks/kernels.py needs a CUDA device (none visible); --dry-run and --static run without one")
        return 2
    torch.manual_seed(0)
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"triton {importlib.import_module('triton').__version__}")
    results, failed = {}, []

    def record(title, make_rows):
        """Print one table (and keep going if it fails: one GPU run must bring back every other table)."""
        try:
            results[title] = make_rows()
        except Exception as exc:  # noqa: BLE001
            failed.append(title)
            print(f"\n{title}\nFAILED: {type(exc).__name__}: {exc}")
            traceback.print_exc()
        else:
            print_table(title, results[title])
        sys.stdout.flush()
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)

    for key, title, cases, rows in sections(args):
        if key in only:
            record(title, lambda: rows(cases))
    if args.profile:
        profiled = []
        record("profile", lambda: profiled.extend(profile_tables(args.profile_t, sections(args)[3][2][:2])) or [])
        for title, rows in profiled:
            record(title, lambda: rows)
    return 1 if failed else 0

if __name__ == "__main__":
    raise SystemExit(main())
