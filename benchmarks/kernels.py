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


SSD_VARIANTS = ("fused", "split")
SPLIT_TILES = [(8, 128, 8), (4, 128, 4), (8, 64, 8), (4, 64, 4), (4, 32, 4)]   # (dx warps, dB/dC columns, warps)
SCAN_TILES = [(32, 128, 4), (16, 128, 4), (64, 128, 8), (32, 256, 8), (64, 64, 4)]   # lookback (T, D, warps)


def ssd_inputs(t, heads=32, p=64, n=128, groups=1):
    dev = dict(device="cuda", dtype=torch.bfloat16)
    x = torch.randn(1, t, heads, p, **dev, requires_grad=True)
    dt = F.softplus(torch.randn(1, t, heads, device="cuda") - 3).requires_grad_()
    A = (-torch.rand(heads, device="cuda") - 0.5).requires_grad_()
    B = torch.randn(1, t, groups, n, **dev, requires_grad=True)
    C = torch.randn(1, t, groups, n, **dev, requires_grad=True)
    D = torch.randn(heads, device="cuda", requires_grad=True)
    return [x, dt, A, B, C, D], (torch.randn_like(x),)


def ssd_closures(ins, dy, chunk=64):
    """{name: fwd+bwd closure} for our two backward variants, plus the forward alone."""
    from kernels.ssd.triton import ssd_triton
    out = {v: fwd_bwd(lambda x, dt, A, B, C, D, v=v: ssd_triton(x, dt, A, B, C, D=D, chunk_size=chunk, backward=v),
                      ins, dy) for v in SSD_VARIANTS}
    out["split128"] = fwd_bwd(lambda x, dt, A, B, C, D: ssd_triton(x, dt, A, B, C, D=D, chunk_size=128,
                                                                   backward="split"), ins, dy)
    det = [t.detach() for t in ins]
    out["fwd"] = lambda: ssd_triton(*det[:5], D=det[5], chunk_size=chunk)
    return out


def ssd_rows(seqlens, chunk=64, torch_max_t=16384):
    from kernels.ssd import ssd_chunked
    from kernels.ssd.mamba import load_chunk_scan
    mamba = load_chunk_scan()
    rows = []
    for t in seqlens:
        ins, dy = ssd_inputs(t)
        runs = ssd_closures(ins, dy, chunk)
        row = dict(T=t, fused_ms=bench(runs["fused"]), split_ms=bench(runs["split"]),
                   split128_ms=bench(runs["split128"]), fwd_ms=bench(runs["fwd"]), mamba_ms=None, mamba_fwd_ms=None,
                   fused_vs_mamba=None, split_vs_mamba=None, split128_vs_mamba=None, torch_chunked_ms=None)
        if mamba is not None:
            row["mamba_ms"] = bench(fwd_bwd(lambda x, dt, A, B, C, D: mamba_chunk_scan_combined_call(
                mamba, x, dt, A, B, C, D), ins, dy))
            det = [v.detach() for v in ins]
            row["mamba_fwd_ms"] = bench(lambda: mamba_chunk_scan_combined_call(mamba, *det))
            row["fused_vs_mamba"] = row["mamba_ms"] / row["fused_ms"]
            row["split_vs_mamba"] = row["mamba_ms"] / row["split_ms"]
            row["split128_vs_mamba"] = row["mamba_ms"] / row["split128_ms"]
        if t <= torch_max_t:
            row["torch_chunked_ms"] = bench(fwd_bwd(
                lambda x, dt, A, B, C, D: ssd_chunked(x, dt, A, B, C, D=D, chunk_size=chunk), ins, dy), 2, 5)
        rows.append(row)
        del ins, dy, runs
        torch.cuda.empty_cache()
    return rows


def ssd_tile_rows(seqlens, tiles=SPLIT_TILES):
    """The split backward's launch shapes (LONGWEAVE_SSD_SPLIT_TILES) side by side, fwd+bwd ms."""
    rows = []
    for t in seqlens:
        ins, dy = ssd_inputs(t)
        runs = ssd_closures(ins, dy)
        for dxw, cols, warps in tiles:
            os.environ["LONGWEAVE_SSD_SPLIT_TILES"] = f"{dxw},{cols},{warps}"
            rows.append(dict(T=t, tiles=f"dx w{dxw}, dB/dC {cols} cols w{warps}", split_ms=bench(runs["split"]),
                             split128_ms=bench(runs["split128"])))
        os.environ.pop("LONGWEAVE_SSD_SPLIT_TILES", None)
        del ins, dy, runs
    return rows


def mamba_chunk_scan_combined_call(fn, x, dt, A, B, C, D):
    return fn(x, dt, A, B, C, chunk_size=256, D=D)


def copy_gbs(nbytes: int) -> float:
    """Device-to-device copy bandwidth (read + write) of a buffer of nbytes, GB/s."""
    src = torch.empty(nbytes // 2, device="cuda", dtype=torch.bfloat16).normal_()
    dst = torch.empty_like(src)
    return 2 * nbytes / bench(lambda: dst.copy_(src)) / 1e6


def scan_fns():
    from kernels.rglru.triton import linear_scan_triton
    from kernels.rglru.triton_lookback import linear_scan_lookback
    return {"tiled": linear_scan_triton, "lookback": linear_scan_lookback}


def scan_gbs(fn, a, x, dh):
    """(forward GB/s: read a, x, write h; backward GB/s: read a, h, dh, write da, dx; timed as
    fwd+bwd minus fwd)."""
    nbytes = a.numel() * a.element_size()
    fwd_ms = bench(lambda: fn(a.detach(), x.detach()))
    bwd_ms = bench(lambda: torch.autograd.grad(fn(a, x), (a, x), dh)) - fwd_ms
    return 3 * nbytes / fwd_ms / 1e6, 5 * nbytes / bwd_ms / 1e6


def scan_inputs(b, t, d):
    a = (torch.rand(b, t, d, device="cuda") * 0.5 + 0.5).to(torch.bfloat16).requires_grad_()
    x = torch.randn(b, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    return a, x, torch.randn_like(x)


def scan_rows(shapes):
    rows = []
    for b, t, d in shapes:
        a, x, dh = scan_inputs(b, t, d)
        copy = copy_gbs(2 * a.numel() * a.element_size())     # two tensors' worth of bytes
        row = dict(shape=f"{b}x{t}x{d}", copy_gbs=copy)
        for name, fn in scan_fns().items():
            fwd, bwd = scan_gbs(fn, a, x, dh)
            row.update({f"{name}_fwd_gbs": fwd, f"{name}_bwd_gbs": bwd,
                        f"{name}_fwd_vs_copy": fwd / copy, f"{name}_bwd_vs_copy": bwd / copy})
        rows.append(row)
    return rows


def scan_tile_rows(shapes, tiles=SCAN_TILES):
    """The lookback scan's block shapes (LONGWEAVE_SCAN_TILES) side by side, % of copy."""
    fn = scan_fns()["lookback"]
    rows = []
    for b, t, d in shapes:
        a, x, dh = scan_inputs(b, t, d)
        copy = copy_gbs(2 * a.numel() * a.element_size())
        for bt, bd, warps in tiles:
            os.environ["LONGWEAVE_SCAN_TILES"] = f"{bt},{bd},{warps}"
            fwd, bwd = scan_gbs(fn, a, x, dh)
            rows.append(dict(shape=f"{b}x{t}x{d}", tile=f"{bt}x{bd} w{warps}", fwd_vs_copy=fwd / copy,
                             bwd_vs_copy=bwd / copy))
        os.environ.pop("LONGWEAVE_SCAN_TILES", None)
    return rows


def gated_rows(shapes, c=8.0):
    """Whole RG-LRU from gate pre-activations: fused Triton (read u, ga, gx, write h; backward reads
    u, ga, gx, h, dh, writes du, dga, dgx) vs torch gate math + the tiled scan; ms, fused GB/s vs copy."""
    from kernels.rglru.gated import gated_coefficients
    from kernels.rglru.triton import linear_scan_triton
    from kernels.rglru.triton_gated import rglru_gated_triton
    rows = []
    for b, t, d in shapes:
        u, ga, gx = (torch.randn(b, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        lam = torch.randn(d, device="cuda", requires_grad=True)
        dh = (torch.randn_like(u),)
        nbytes = u.numel() * u.element_size()
        copy = copy_gbs(2 * nbytes)
        fused = lambda u, ga, gx, lam: rglru_gated_triton(u, ga, gx, lam, c)  # noqa: E731
        unfused = lambda u, ga, gx, lam: linear_scan_triton(*gated_coefficients(u, ga, gx, lam, c)).to(u.dtype)  # noqa: E731
        row = dict(shape=f"{b}x{t}x{d}", copy_gbs=copy)
        for name, fn in (("fused", fused), ("unfused", unfused)):
            fwd = bench(lambda: fn(u.detach(), ga.detach(), gx.detach(), lam.detach()))
            both = bench(fwd_bwd(fn, (u, ga, gx, lam), dh))
            row.update({f"{name}_fwd_ms": fwd, f"{name}_fwdbwd_ms": both})
            if name == "fused":
                row.update(fused_fwd_vs_copy=4 * nbytes / fwd / 1e6 / copy,
                           fused_bwd_vs_copy=8 * nbytes / (both - fwd) / 1e6 / copy)
        rows.append(row)
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


def our_kernels() -> dict:
    """{module.name: JITFunction} of every Triton kernel of the SSD and the linear scan."""
    import triton

    from kernels.rglru import triton as tiled
    from kernels.rglru import triton_gated, triton_lookback
    from kernels.ssd import triton_bwd, triton_bwd_split, triton_fwd
    found = {}
    for mod in (triton_fwd, triton_bwd, triton_bwd_split, tiled, triton_lookback, triton_gated):
        for name, fn in vars(mod).items():
            if isinstance(fn, triton.runtime.JITFunction) and name.endswith("_kernel"):
                found.setdefault(id(fn), (f"{mod.__name__.split('.')[-1]}.{name}", fn))
    return dict(found.values())


def profile_tables(t_ssd: int, scan_shapes) -> list[tuple[str, list[dict]]]:
    """--profile: achieved bandwidth (minimum bytes an op must move / its time) vs a device copy in
    the same run, CUDA time per kernel, and the resources of every Triton kernel this run compiled."""
    from kernel_profile import kernel_times, runtime_resources
    nb = lambda *ts: sum(v.numel() * v.element_size() for v in ts)  # noqa: E731
    bw, tables = [], []
    ins, dy = ssd_inputs(t_ssd)
    runs = ssd_closures(ins, dy)
    x, dt, A, B, C, D = ins
    copy = copy_gbs(nb(x))
    passes = [("fwd", runs["fwd"], nb(x, dt, B, C, x), 0.0)]    # read x, dt, B, C; write y
    fwd_ms = bench(runs["fwd"])
    for v in SSD_VARIANTS + ("split128",):   # bwd: read x, dt, B, C, dy; write dx, ddt, dB, dC (fwd+bwd − fwd)
        passes.append((f"{v} bwd", runs[v], nb(x, dt, B, C, x, x, dt, B, C), fwd_ms))
        tables.append((f"profile: SSD fwd+bwd ({v} backward), T={t_ssd}: CUDA time per kernel", kernel_times(runs[v])))
    for name, fn, nbytes, minus in passes:
        ms = bench(fn) - minus
        bw.append(dict(op=f"SSD T={t_ssd}", pass_=name, min_mb=nbytes / 1e6, ms=ms, gbs=nbytes / ms / 1e6,
                       vs_copy=nbytes / ms / 1e6 / copy))
    del ins, dy, runs
    for b, t, d in scan_shapes:
        a, xs, dh = scan_inputs(b, t, d)
        copy = copy_gbs(2 * nb(a))
        for name, fn in scan_fns().items():
            fwd, bwd = scan_gbs(fn, a, xs, dh)
            for pass_, gbs, units in (("fwd", fwd, 3), ("bwd", bwd, 5)):
                bw.append(dict(op=f"scan {b}x{t}x{d}", pass_=f"{name} {pass_}", min_mb=units * nb(a) / 1e6,
                               ms=units * nb(a) / gbs / 1e6, gbs=gbs, vs_copy=gbs / copy))
            tables.append((f"profile: scan {name} fwd+bwd {b}x{t}x{d}: CUDA time per kernel",
                           kernel_times(lambda: torch.autograd.grad(fn(a, xs), (a, xs), dh))))
    tables.insert(0, ("profile: achieved bandwidth (minimum bytes moved / time) vs device copy, same run", bw))
    tables.append(("profile: Triton kernels compiled in this run (registers, spills, shared memory, "
                   "resident programs per SM)", runtime_resources(our_kernels())))
    return tables


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
    results = {}
    for key, title, cases, rows in sections(args):
        if key in only:
            results[key] = rows(cases)
            print_table(title, results[key])
            sys.stdout.flush()
    if args.profile:
        for title, rows in profile_tables(args.profile_t, sections(args)[3][2][:2]):
            results[title] = rows
            print_table(title, rows)
            sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [os.path.dirname(here), here]  # run from a checkout: the packages and kernel_profile
    raise SystemExit(main())
