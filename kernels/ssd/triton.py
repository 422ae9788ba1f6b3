"""Fused Triton SSD (Mamba-2 chunk scan), forward and backward, behind `ssd_triton`.

Same contract as kernels/ssd/reference.py. Forward: chunk states -> state passing -> chunk
outputs (kernels/ssd/triton_fwd.py); backward: dL/d(entering state) per chunk -> reverse state
passing -> one fused per-chunk kernel for dx, ddt, dB, dC and the decay gradients
(kernels/ssd/triton_bwd.py), or the 'split' candidate: separate chunk-parallel dx/ddt, dC and dB
kernels (kernels/ssd/triton_bwd_split.py; LONGWEAVE_SSD_BWD or backward= picks, default fused).
Small reductions (dA, dD, the chunk-decay gradient) are summed from per-program partials in torch. Triton is imported lazily by the dispatcher so
TRITON_INTERPRET=1 can run these kernels on a CPU for the tests.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton

from kernels.dispatch import empty_output, ssd_bwd_variant
from kernels.segments import segment_ids
from kernels.ssd import triton_bwd as bwd
from kernels.ssd import triton_bwd_split as bwd_split
from kernels.ssd import triton_fwd as fwd
from kernels.ssd.gating import with_gating

STATE_BLOCK = 256


def kernel_chunk(chunk_size: int, fp32: bool = False, split: bool = False) -> int:
    """The chunk length the kernels use: a power of two in [16, 64] (32 for fp32 tiles on a GPU),
    up to 128 in bf16/fp16 with the split backward. The result does not depend on it (chunking only
    regroups the same sum); the cap keeps a chunk's [L, L] and [L, N] tiles within an H100's shared
    memory (measured: the fused backward at 128 in bf16 needs 315 KB, at 64 in fp32 297 KB, limit
    227 KB; the split kernels at 128 in bf16 need at most 162 KB in an offline sm_90 compile). A
    longer chunk halves the fp32 chunk states written and read per token."""
    cap = (32 if fp32 else 128) if split else (32 if fp32 else 64)
    return max(16, min(cap, 1 << (max(1, chunk_size).bit_length() - 1)))


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _pad(v: int) -> int:
    return max(16, triton.next_power_of_2(v))


def _lowp(x: torch.Tensor) -> bool:
    """bf16/fp16 operands on the tensor cores; fp32 (and the interpreter, whose bf16 dot is broken
    in Triton 3.7) multiplies exact fp32 copies."""
    return x.dtype in (torch.float16, torch.bfloat16) and not _interpreted()


def _warps(p: int, n: int) -> dict:
    return {} if _interpreted() else {"num_warps": 8 if p * n >= 64 * 128 else 4}


def _keep(dt, A, seg, L, nc):
    """exp(chunk's total log-decay) where the carried state survives the chunk (same segment)."""
    b, t, h = dt.shape
    pad = nc * L - t
    a = F.pad(dt.float() * A.float(), (0, 0, 0, pad)).view(b, nc, L, h).sum(2)          # [b,nc,h]
    segp = F.pad(seg, (0, pad), mode="replicate").view(b, nc, L)
    prev = torch.cat([segp[:, :1, 0], segp[:, :-1, -1]], dim=1)
    ok = (segp[:, :, -1] == prev).float()
    return (torch.exp(a) * ok[..., None]).contiguous()                                   # [b,nc,h]


def _forward(x, dt, A, B, C, D, h0, seg, L):
    b, t, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    nc = triton.cdiv(t, L)
    bp, bn = _pad(p), _pad(n)
    common = dict(L=L, BP=bp, BN=bn, LOWP=_lowp(x), **_warps(bp, bn))
    cs = empty_output((b, nc, h, p, n), dtype=torch.float32, device=x.device)
    fwd.chunk_state_kernel[(nc, b * h)](x, dt, A, B, seg, cs, t, h, g, p, n, **common)
    keep = _keep(dt, A, seg, L, nc)
    enter = empty_output((b, nc, h, p, n), dtype=torch.float32, device=x.device)
    final = empty_output((b, h, p, n), dtype=torch.float32, device=x.device)
    fwd.state_pass_kernel[(b * h, triton.cdiv(p * n, STATE_BLOCK))](
        cs, keep, h0 if h0 is not None else cs, enter, final, nc, h, p * n,
        HAS_H0=h0 is not None, BLOCK=STATE_BLOCK)
    y = empty_output((b, t, h, p), dtype=x.dtype, device=x.device)
    fwd.chunk_out_kernel[(nc, b * h)](x, dt, A, B, C, D if D is not None else A, seg, enter, y, t, h, g, p, n,
                                      HAS_D=D is not None, **common)
    return y, final, enter, keep


class _TritonSSD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, h0, seg, L, variant):
        y, final, enter, keep = _forward(x, dt, A, B, C, D, h0, seg, L)
        ctx.save_for_backward(x, dt, A, B, C, D, h0, seg, enter, keep)
        ctx.L, ctx.variant = L, variant
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, dt, A, B, C, D, h0, seg, enter, keep = ctx.saved_tensors
        run = bwd_split.ssd_backward_split if ctx.variant == "split" else bwd.ssd_backward
        grads = run(dy, dfinal, x, dt, A, B, C, D, h0, seg, enter, keep, ctx.L,
                    lowp=_lowp(x), warps=_warps(_pad(x.shape[3]), _pad(B.shape[3])))
        dx, ddt, dA, dB, dC, dD, dh0 = grads
        return dx, ddt, dA, dB, dC, dD, dh0, None, None, None


@with_gating
def ssd_triton(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    doc_ids: torch.Tensor | None = None,
    return_final_state: bool = False,
    chunk_size: int = 64,
    backward: str | None = None,
):
    """y [b,t,h,p] in x.dtype (and the final state [b,h,p,n] fp32); float64 runs in fp32.
    chunk_size is a hint: the kernels use kernel_chunk(chunk_size) (same result, see there).
    backward picks the backward kernels, 'fused' or 'split' (default: LONGWEAVE_SSD_BWD, else
    'fused'; kernels/dispatch.py:ssd_bwd_variant)."""
    b, t, h, p = x.shape
    if h % B.shape[2]:
        raise ValueError(f"ssd: heads {h} must be a multiple of groups {B.shape[2]}")
    if x.device.type == "cpu" and not _interpreted():
        raise RuntimeError("the Triton SSD on CPU needs TRITON_INTERPRET=1 (or run on a CUDA device)")
    if chunk_size < 1:
        raise ValueError(f"ssd: chunk_size must be positive, got {chunk_size}")
    variant = ssd_bwd_variant(backward)
    in_dtype = x.dtype
    if in_dtype == torch.float64:
        x, dt, A, B, C = x.float(), dt.float(), A.float(), B.float(), C.float()
        D = D.float() if D is not None else None
        initial_state = initial_state.float() if initial_state is not None else None
    if t == 0:
        y = x.new_zeros(b, 0, h, p)
        final = initial_state.float() if initial_state is not None else x.new_zeros(b, h, p, B.shape[3]).float()
    else:
        seg = (segment_ids(doc_ids) if doc_ids is not None
               else torch.zeros(b, t, dtype=torch.int64, device=x.device)).to(torch.int32).contiguous()
        h0 = initial_state.contiguous() if initial_state is not None else None
        L = kernel_chunk(chunk_size, fp32=x.dtype == torch.float32 and not _interpreted(), split=variant == "split")
        y, final = _TritonSSD.apply(x.contiguous(), dt.contiguous(), A.contiguous(), B.contiguous(),
                                    C.contiguous(), D.contiguous() if D is not None else None, h0, seg, L, variant)
    if in_dtype == torch.float64:
        y, final = y.double(), final.double()
    return (y, final) if return_final_state else y
