# ruff: noqa: B023  (closures are timed inside the loop iteration that made them)
"""The long-T sections of benchmarks/kernels.py: SSD with both backward variants (and mamba-ssm),
the split backward's launch shapes, the RG-LRU scans and the lookback block shapes, the fused
gated RG-LRU, and the --profile tables. Random bf16 inputs on CUDA; timing in kernel_profile.py."""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from kernel_profile import bench, copy_gbs, fwd_bwd

DEVICE = "cuda"                 # the one device these tables are measured on
SSD_VARIANTS = ("fused", "split")
SPLIT_TILES = [(8, 128, 8), (4, 128, 4), (8, 64, 8), (4, 64, 4), (4, 32, 4)]   # (dx warps, dB/dC columns, warps)
SCAN_TILES = [(32, 128, 4), (16, 128, 4), (64, 128, 8), (32, 256, 8), (64, 64, 4)]   # lookback (T, D, warps)


def ssd_inputs(t, heads=32, p=64, n=128, groups=1):
    dev = dict(device=DEVICE, dtype=torch.bfloat16)
    x = torch.randn(1, t, heads, p, **dev, requires_grad=True)
    dt = F.softplus(torch.randn(1, t, heads, device=DEVICE) - 3).requires_grad_()
    A = (-torch.rand(heads, device=DEVICE) - 0.5).requires_grad_()
    B = torch.randn(1, t, groups, n, **dev, requires_grad=True)
    C = torch.randn(1, t, groups, n, **dev, requires_grad=True)
    D = torch.randn(heads, device=DEVICE, requires_grad=True)
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
    from kernels.ssd.mamba import load_chunk_scan
    mamba = load_chunk_scan()
    rows = []
    for t in seqlens:
        try:
            rows.append(ssd_row(t, mamba, chunk, torch_max_t))
        except torch.cuda.OutOfMemoryError:
            rows.append(dict(T=t, fused_ms="out of memory"))
        torch.cuda.empty_cache()
    return rows


def ssd_row(t, mamba, chunk, torch_max_t):
    """One T: our fused, split and split128 fwd+bwd, our forward, mamba-ssm, the torch path."""
    from kernels.ssd import ssd_chunked
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
    return row


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
    a = (torch.rand(b, t, d, device=DEVICE) * 0.5 + 0.5).to(torch.bfloat16).requires_grad_()
    x = torch.randn(b, t, d, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
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
        u, ga, gx = (torch.randn(b, t, d, device=DEVICE, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        lam = torch.randn(d, device=DEVICE, requires_grad=True)
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
