"""Timing helpers and per-kernel figures for benchmarks/kernels.py: median time (do_bench), device
copy bandwidth, CUDA time per kernel (torch.profiler), and the
registers, spills, shared memory and resident programs per SM of our Triton kernels, either from
the kernels this run compiled (--profile, GPU) or from an offline sm_90 compile (--static: no GPU
needed, ptxas and cuobjdump ship with Triton; same source, block shapes and int specialisation as
the benchmark's launches, so the figures are the ones a GPU run would load).

Resident programs per SM = min over registers, shared memory, threads and the 32-block limit
(H100/H200: 64K registers, 228 KB shared memory, 2048 threads per SM; 1 KB of shared memory is
reserved per block). It is an upper bound: it ignores register allocation granularity per warp.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections import defaultdict

import torch


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


def copy_gbs(nbytes: int) -> float:
    """Device-to-device copy bandwidth (read + write) of a buffer of nbytes, GB/s."""
    from kernel_rows import DEVICE

    src = torch.empty(nbytes // 2, device=DEVICE, dtype=torch.bfloat16).normal_()
    dst = torch.empty_like(src)
    return 2 * nbytes / bench(lambda: dst.copy_(src)) / 1e6


SM90 = dict(regs=65536, shared=228 * 1024, threads=2048, blocks=32)


def programs_per_sm(regs: int, shared: int, warps: int, sm: dict = SM90) -> int:
    threads = 32 * warps
    by_regs = sm["regs"] // max(1, (-(-regs // 8) * 8) * threads)
    by_shared = sm["shared"] // (shared + 1024)
    return min(by_regs, by_shared, sm["threads"] // threads, sm["blocks"])


def runtime_resources(jit_fns: dict) -> list[dict]:
    """One row per compiled specialisation of each named Triton JITFunction (after a GPU run)."""
    rows = []
    for name, fn in jit_fns.items():
        for entry in getattr(fn, "device_caches", {}).values():
            cache = entry[0] if isinstance(entry, tuple) else entry
            for kernel in cache.values():
                getattr(kernel, "_init_handles", lambda: None)()
                md = kernel.metadata
                regs, shared = getattr(kernel, "n_regs", 0), md.shared
                rows.append(dict(kernel=name, warps=md.num_warps, regs=regs, spills=getattr(kernel, "n_spills", None),
                                 shared_kb=round(shared / 1024, 1),
                                 programs_per_sm=programs_per_sm(regs, shared, md.num_warps)))
    return rows


def kernel_times(fn, steps: int = 3) -> list[dict]:
    """CUDA time per kernel name over `steps` calls of fn (after one warm-up call); a row saying why
    if the profiler fails (the other profile tables still print)."""
    try:
        return _kernel_times(fn, steps)
    except Exception as exc:  # noqa: BLE001
        return [dict(kernel=f"profiler failed: {type(exc).__name__}: {exc}"[:120])]


def _kernel_times(fn, steps: int) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    total = defaultdict(float)
    calls = defaultdict(int)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            total[ev.name] += ev.device_time_total if hasattr(ev, "device_time_total") else ev.cuda_time_total
            calls[ev.name] += 1
    whole = sum(total.values()) or 1.0
    rows = [dict(kernel=k[:48], calls=calls[k] // steps, ms_per_call=total[k] / steps / 1e3, share=total[k] / whole)
            for k in sorted(total, key=total.get, reverse=True)]
    return rows


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def compile_offline(fn, ptr_types: dict, ints: dict, consts: dict, warps: int, arch: int = 90) -> dict:
    """Compile one @triton.jit kernel for sm_<arch> without a GPU; its resource row."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, constexprs, attrs = {}, dict(consts), {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name in ptr_types:
            sig[name] = ptr_types[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(ints.get(name), float):
            sig[name] = "fp32"
        elif ints.get(name) == 1:                 # the launcher specialises 1 to a constant
            sig[name] = "constexpr"
            constexprs[name] = 1
        else:
            sig[name] = "i32"
            if ints.get(name, 1) % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn, sig, constexprs=constexprs, attrs=attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=warps))
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True).stdout
    regs = int(re.search(r"REG:(\d+)", usage).group(1))
    stack = int(re.search(r"STACK:(\d+)", usage).group(1))
    shared = kernel.metadata.shared
    return dict(warps=warps, regs=regs, stack_bytes=stack, shared_kb=round(shared / 1024, 1),
                programs_per_sm=programs_per_sm(regs, shared, warps))


def static_rows(split_tiles, scan_tiles, t: int = 65536, d: int = 2560, b: int = 8) -> list[dict]:
    """Offline sm_90 resources of every Triton kernel the SSD and scan sections launch, at their
    shapes (SSD bf16 H=32 P=64 N=128 G=1, kernel chunk 64; scan bf16 b×8192×d) and block choices
    (split_tiles: (dx warps, dB/dC columns, dB/dC warps); scan_tiles: (T, D, warps))."""
    from kernels.rglru import triton as tiled
    from kernels.rglru import triton_gated as gated
    from kernels.rglru import triton_lookback as lb
    from kernels.ssd import triton_bwd as fused
    from kernels.ssd import triton_bwd_split as split
    from kernels.ssd import triton_fwd as fwd

    bf, f32, i32 = "*bf16", "*fp32", "*i32"
    ssd_ptrs = {name: f32 for name in ("DT", "A", "D", "CS", "KEEP", "H0", "ENTER", "FINAL", "DED", "DFINAL", "DCS",
                                      "DKEEP_PART", "DH0", "DKEEP", "DDT", "DB", "DC", "DA_PART", "DD_PART", "STATE",
                                      "OUT")}
    ssd_ptrs.update({name: bf for name in ("X", "B", "C", "Y", "DY", "DX", "OTHER")}, SEG=i32)
    ssd_ints = dict(T=t, H=32, G=1, P=64, N=128, NC=t // 64, PN=64 * 128, HS=1, split_stride=t * 128)
    tile = dict(L=64, BP=64, BN=128, LOWP=True, HAS_D=True, HAS_H0=False, HAS_DFINAL=False, BLOCK=256)
    ssd = [("ssd fwd chunk_state", fwd.chunk_state_kernel, {}, 8), ("ssd fwd state_pass", fwd.state_pass_kernel, {}, 4),
           ("ssd fwd chunk_out", fwd.chunk_out_kernel, {}, 8), ("ssd bwd chunk_denter", fused.chunk_denter_kernel, {}, 8),
           ("ssd bwd state_pass", fused.state_pass_bwd_kernel, {}, 4),
           ("ssd bwd FUSED chunk_bwd", fused.chunk_bwd_kernel, {}, 8),
           ("ssd bwd SPLIT chunk_dx", split.chunk_dx_kernel, {}, 8),
           ("ssd bwd SPLIT chunk_dx", split.chunk_dx_kernel, {}, 4)]
    for cols, warps in sorted({(c, w) for _, c, w in split_tiles}, reverse=True):
        for which in (False, True):
            ssd.append((f"ssd bwd SPLIT chunk_dbc ({'dB' if which else 'dC'}) cols {cols}", split.chunk_dbc_kernel,
                        dict(WANT_DB=which, BN=cols), warps))
    chunk128 = [("ssd fwd chunk_state", fwd.chunk_state_kernel, {}, 8), ("ssd fwd chunk_out", fwd.chunk_out_kernel, {}, 8),
                ("ssd bwd chunk_denter", fused.chunk_denter_kernel, {}, 8),
                ("ssd bwd SPLIT chunk_dx", split.chunk_dx_kernel, {}, 8)] + [
        (f"ssd bwd SPLIT chunk_dbc ({'dB' if which else 'dC'}) cols 64", split.chunk_dbc_kernel,
         dict(WANT_DB=which, BN=64), 8) for which in (False, True)]
    rows = []
    for chunk, kernels in ((64, ssd), (128, chunk128)):
        ints = dict(ssd_ints, NC=t // chunk)
        for name, fn, extra, warps in kernels:
            consts = {k: v for k, v in {**tile, "L": chunk, **extra}.items() if k in fn.arg_names}
            rows.append(dict(kernel=f"{name} (chunk {chunk})",
                             **compile_offline(fn, ssd_ptrs, ints, consts, warps)))
    scan_ptrs = dict(A=bf, X=bf, H=bf, H0=f32, DOC=i32, FINAL=f32, CARRY=i32, TICKET=i32, DH=bf, DFINAL=f32, DA=bf,
                     DX=bf, DH0=f32, U=bf, GA=bf, GX=bf, K=f32, UNSC=i32, DU=bf, DGA=bf, DGX=bf, DK_PART=f32)
    flags = dict(HAS_H0=False, HAS_DOC=False, HAS_DFINAL=False, HAS_UNSCALED=False)
    bt, bd, opts = tiled._blocks(b, d)
    for name, fn in (("scan TILED fwd", tiled.scan_fwd_kernel), ("scan TILED bwd", tiled.scan_bwd_kernel)):
        consts = {k: v for k, v in dict(flags, BLOCK_T=bt, BLOCK_D=bd).items() if k in fn.arg_names}
        rows.append(dict(kernel=f"{name} {bt}x{bd}", **compile_offline(fn, scan_ptrs, dict(T=8192, D=d), consts,
                                                                       opts["num_warps"])))
    for bt, bd, warps in scan_tiles:
        ints = dict(T=8192, D=d, NK=8192 // bt, NB=b, NDB=-(-d // bd), max_sqrt_grad=1000.0)
        for name, fn in (("scan LOOKBACK fwd", lb.lookback_fwd_kernel), ("scan LOOKBACK bwd", lb.lookback_bwd_kernel),
                         ("rglru GATED fwd", gated.gated_fwd_kernel), ("rglru GATED bwd", gated.gated_bwd_kernel)):
            consts = {k: v for k, v in dict(flags, BLOCK_T=bt, BLOCK_D=bd).items() if k in fn.arg_names}
            rows.append(dict(kernel=f"{name} {bt}x{bd}", **compile_offline(fn, scan_ptrs, ints, consts, warps)))
    return rows
