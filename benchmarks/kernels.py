# ruff: noqa: B023  (closures are timed inside the loop iteration that made them)
"""Kernel benchmark (GPU): prints tables of measured figures for our fused kernels vs baselines.

  python benchmarks/kernels.py [--quick] [--only attention,ssd,scan,conv] [--json PATH]

- attention, causal, bf16, d=128, fwd+bwd TFLOP/s (FLOPs: fwd 2·2·B·H·T²·d / 2 for causal,
  bwd 2.5× fwd), ours (Triton) vs torch SDPA with the flash backend and flash-attn if importable;
- SSD fwd+bwd time, ours (Triton) vs mamba-ssm's `mamba_chunk_scan_combined` (if importable; its
  SSD kernels are pure Triton, so a wheel built with MAMBA_SKIP_CUDA_BUILD=TRUE works) and vs our
  torch-chunked path (T <= 16K: its Python loop over chunks makes longer runs slow to time);
- RG-LRU linear scan achieved GB/s (forward: read a, x, write h; backward: read a, h, dh, write
  da, dx) vs a device-to-device copy (read + write) measured in the same run;
- causal conv1d fwd+bwd time, ours (Triton) vs the torch path.
Timing: triton.testing.do_bench (CUDA events, median), random inputs, after warm-up.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

import torch
import torch.nn.functional as F


def bench(fn, warmup: int = 25, rep: int = 100) -> float:
    """Median milliseconds of fn()."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def fwd_bwd(fn, inputs, grads):
    """A closure running fn(*inputs) forward and backward (gradients of every input)."""
    def run():
        outs = fn(*inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        torch.autograd.grad(outs, inputs, grads[:len(outs)])
    return run


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


def ssd_rows(seqlens, heads=32, p=64, n=128, groups=1, chunk=64, torch_max_t=16384):
    from kernels.ssd import ssd_chunked
    from kernels.ssd.mamba import load_chunk_scan
    from kernels.ssd.triton import ssd_triton
    mamba = load_chunk_scan()
    rows = []
    for t in seqlens:
        dev = dict(device="cuda", dtype=torch.bfloat16)
        x = torch.randn(1, t, heads, p, **dev)
        dt = F.softplus(torch.randn(1, t, heads, device="cuda") - 3).requires_grad_()
        A = (-torch.rand(heads, device="cuda") - 0.5).requires_grad_()
        B, C = torch.randn(1, t, groups, n, **dev), torch.randn(1, t, groups, n, **dev)
        D = torch.randn(heads, device="cuda", requires_grad=True)
        ins = [x.requires_grad_(), dt, A, B.requires_grad_(), C.requires_grad_(), D]
        dy = (torch.randn_like(x),)
        ours = bench(fwd_bwd(lambda x, dt, A, B, C, D: ssd_triton(x, dt, A, B, C, D=D, chunk_size=chunk), ins, dy))
        ours_f = bench(lambda: ssd_triton(x.detach(), dt.detach(), A.detach(), B.detach(), C.detach(),
                                          D=D.detach(), chunk_size=chunk))
        row = dict(T=t, ours_ms=ours, ours_fwd_ms=ours_f, mamba_ms=None, mamba_fwd_ms=None, speedup_vs_mamba=None,
                   torch_chunked_ms=None)
        if mamba is not None:
            row["mamba_ms"] = bench(fwd_bwd(lambda x, dt, A, B, C, D: mamba_chunk_scan_combined_call(
                mamba, x, dt, A, B, C, D), ins, dy))
            row["mamba_fwd_ms"] = bench(lambda: mamba_chunk_scan_combined_call(
                mamba, x.detach(), dt.detach(), A.detach(), B.detach(), C.detach(), D.detach()))
            row["speedup_vs_mamba"] = row["mamba_ms"] / ours
        if t <= torch_max_t:
            row["torch_chunked_ms"] = bench(fwd_bwd(
                lambda x, dt, A, B, C, D: ssd_chunked(x, dt, A, B, C, D=D, chunk_size=chunk), ins, dy), 2, 5)
        rows.append(row)
    return rows


def mamba_chunk_scan_combined_call(fn, x, dt, A, B, C, D):
    return fn(x, dt, A, B, C, chunk_size=256, D=D)


def scan_rows(shapes):
    from kernels.rglru.triton import linear_scan_triton
    rows = []
    for b, t, d in shapes:
        a = (torch.rand(b, t, d, device="cuda") * 0.5 + 0.5).to(torch.bfloat16).requires_grad_()
        x = torch.randn(b, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        dh = torch.randn_like(x)
        nbytes = a.numel() * a.element_size()
        src = torch.randn(4 * b * t * d // 2, device="cuda", dtype=torch.bfloat16)  # 2 tensors' worth of bytes
        dst = torch.empty_like(src)
        copy_ms = bench(lambda: dst.copy_(src))
        copy_gbs = 2 * src.numel() * src.element_size() / copy_ms / 1e6
        fwd_ms = bench(lambda: linear_scan_triton(a.detach(), x.detach()))
        bwd_ms = bench(lambda: torch.autograd.grad(linear_scan_triton(a, x), (a, x), dh)) - fwd_ms
        rows.append(dict(shape=f"{b}x{t}x{d}", copy_gbs=copy_gbs, fwd_gbs=3 * nbytes / fwd_ms / 1e6,
                         bwd_gbs=5 * nbytes / bwd_ms / 1e6, fwd_vs_copy=3 * nbytes / fwd_ms / 1e6 / copy_gbs))
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smallest sizes only (a smoke run)")
    ap.add_argument("--only", default="attention,ssd,scan,conv")
    ap.add_argument("--json", default=None, help="also write all rows to this JSON file")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/kernels.py needs a CUDA device (none visible)")
        return 2
    torch.manual_seed(0)
    only = set(args.only.split(","))
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"triton {importlib.import_module('triton').__version__}")
    results = {}
    lens = [8192] if args.quick else [8192, 16384, 32768, 65536]
    sections = [
        ("attention", "attention causal bf16 d=128 H=16 (B*T = 64K tokens), TFLOP/s", lambda: attention_rows(lens)),
        ("ssd", "SSD bf16, B=1 H=32 P=64 N=128 G=1, ms (mamba-ssm chunk 256, ours chunk 64)",
         lambda: ssd_rows([4096] if args.quick else [4096, 16384, 65536])),
        ("scan", "RG-LRU linear scan bf16, GB/s vs device copy",
         lambda: scan_rows([(4, 4096, 2560)] if args.quick else [(4, 4096, 2560), (8, 8192, 2560)])),
        ("conv", "causal conv1d k=4 + SiLU + doc resets, fwd+bwd bf16, ms",
         lambda: conv_rows([(4, 8192, 4096)])),
    ]
    for key, title, fn in sections:
        if key in only:
            results[key] = fn()
            print_table(title, results[key])
            sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
    raise SystemExit(main())
