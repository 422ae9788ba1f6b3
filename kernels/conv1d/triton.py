"""Fused Triton causal depthwise conv1d, forward and backward (contract: kernels/conv1d/reference.py).

Why: the torch path with document masks makes k masked passes and keeps their temporaries for
autograd; here one pass reads x (and the k-1 left-context rows), applies the per-tap document
check from segment ids, adds the bias and the SiLU, and writes y. Backward: one pass recomputes
the pre-activation, writes dz and per-program partials of dweight/dbias; a second pass gathers
dx (and d left_context) from dz over the k taps. Layout [b, t, c], channels contiguous.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels.dispatch import empty_output
from kernels.segments import segment_ids


@triton.jit
def _load_tap(X, LEFT, SEGE, b, src, cols, seg_own, T, CH, K: tl.constexpr, rmask, cmask,
              HAS_LEFT: tl.constexpr, HAS_DOC: tl.constexpr):
    """x at sequence index src (left context where src < 0), zero across a document change."""
    m = rmask[:, None] & cmask[None, :]
    xv = tl.load(X + (b * T + src[:, None]) * CH + cols[None, :], mask=m & (src[:, None] >= 0), other=0.0)
    if HAS_LEFT:
        lv = tl.load(LEFT + (b * (K - 1) + (K - 1) + src[:, None]) * CH + cols[None, :],
                     mask=m & (src[:, None] < 0), other=0.0)
        xv = tl.where(src[:, None] >= 0, xv, lv)
    xv = xv.to(tl.float32)
    if HAS_DOC:
        seg_src = tl.load(SEGE + b * (T + K - 1) + src + K - 1, mask=rmask & (src + K - 1 >= 0), other=-1)
        xv = tl.where((seg_src == seg_own)[:, None], xv, 0.0)
    return xv


@triton.jit
def _preact(X, W, BIAS, LEFT, SEGE, b, rows, cols, T, CH, K: tl.constexpr, HAS_BIAS: tl.constexpr,
            HAS_LEFT: tl.constexpr, HAS_DOC: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    rmask = rows < T
    cmask = cols < CH
    seg_own = rows
    if HAS_DOC:
        seg_own = tl.load(SEGE + b * (T + K - 1) + rows + K - 1, mask=rmask, other=-2)
    acc = tl.zeros([BT, BC], dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(BIAS + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    for i in tl.static_range(K):
        xv = _load_tap(X, LEFT, SEGE, b, rows - (K - 1) + i, cols, seg_own, T, CH, K, rmask, cmask,
                       HAS_LEFT, HAS_DOC)
        acc += tl.load(W + cols * K + i, mask=cmask, other=0.0).to(tl.float32)[None, :] * xv
    return acc


@triton.jit
def conv_fwd_kernel(X, W, BIAS, LEFT, SEGE, Y, T, CH, K: tl.constexpr, HAS_BIAS: tl.constexpr,
                    HAS_LEFT: tl.constexpr, HAS_DOC: tl.constexpr, SILU: tl.constexpr,
                    BT: tl.constexpr, BC: tl.constexpr):
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    b = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(2) * BC + tl.arange(0, BC)
    z = _preact(X, W, BIAS, LEFT, SEGE, b, rows, cols, T, CH, K, HAS_BIAS, HAS_LEFT, HAS_DOC, BT, BC)
    if SILU:
        z = z * tl.sigmoid(z)
    tl.store(Y + (b * T + rows[:, None]) * CH + cols[None, :], z.to(Y.dtype.element_ty),
             mask=(rows[:, None] < T) & (cols[None, :] < CH))


@triton.jit
def conv_bwd_dz_kernel(X, W, BIAS, LEFT, SEGE, DY, DZ, DW_PART, DB_PART, T, CH, K: tl.constexpr,
                       HAS_BIAS: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_DOC: tl.constexpr,
                       SILU: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    pt = tl.program_id(0)
    rows = pt * BT + tl.arange(0, BT)
    b = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(2) * BC + tl.arange(0, BC)
    rmask = rows < T
    cmask = cols < CH
    m = rmask[:, None] & cmask[None, :]
    dz = tl.load(DY + (b * T + rows[:, None]) * CH + cols[None, :], mask=m, other=0.0).to(tl.float32)
    if SILU:
        z = _preact(X, W, BIAS, LEFT, SEGE, b, rows, cols, T, CH, K, HAS_BIAS, HAS_LEFT, HAS_DOC, BT, BC)
        sg = tl.sigmoid(z)
        dz = dz * sg * (1.0 + z * (1.0 - sg))
    tl.store(DZ + (b * T + rows[:, None]) * CH + cols[None, :], dz, mask=m)
    part = b * tl.num_programs(0) + pt
    seg_own = rows
    if HAS_DOC:
        seg_own = tl.load(SEGE + b * (T + K - 1) + rows + K - 1, mask=rmask, other=-2)
    for i in tl.static_range(K):
        xv = _load_tap(X, LEFT, SEGE, b, rows - (K - 1) + i, cols, seg_own, T, CH, K, rmask, cmask,
                       HAS_LEFT, HAS_DOC)
        tl.store(DW_PART + (part * CH + cols) * K + i, tl.sum(dz * xv, 0), mask=cmask)
    if HAS_BIAS:
        tl.store(DB_PART + part * CH + cols, tl.sum(dz, 0), mask=cmask)


@triton.jit
def conv_bwd_dx_kernel(W, SEGE, DZ, DX, DLEFT, T, CH, K: tl.constexpr, HAS_LEFT: tl.constexpr,
                       HAS_DOC: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    """dxe[e] = Σ_i w_i · dz[e − i] over the extended span e ∈ [0, T + K − 1) (e < K−1: left context)."""
    e = tl.program_id(0) * BT + tl.arange(0, BT)
    b = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(2) * BC + tl.arange(0, BC)
    TE = T + K - 1
    emask = e < TE
    cmask = cols < CH
    seg_e = e
    if HAS_DOC:
        seg_e = tl.load(SEGE + b * TE + e, mask=emask, other=-1)
    acc = tl.zeros([BT, BC], dtype=tl.float32)
    for i in tl.static_range(K):
        o = e - i                                       # output reading xe[e] through tap i
        om = emask & (o >= 0) & (o < T)
        dz = tl.load(DZ + (b * T + o[:, None]) * CH + cols[None, :], mask=om[:, None] & cmask[None, :], other=0.0)
        if HAS_DOC:
            seg_o = tl.load(SEGE + b * TE + o + K - 1, mask=om, other=-2)
            dz = tl.where((seg_o == seg_e)[:, None], dz, 0.0)
        acc += tl.load(W + cols * K + i, mask=cmask, other=0.0).to(tl.float32)[None, :] * dz
    xi = e - (K - 1)
    tl.store(DX + (b * T + xi[:, None]) * CH + cols[None, :], acc.to(DX.dtype.element_ty),
             mask=(emask & (xi >= 0))[:, None] & cmask[None, :])
    if HAS_LEFT:
        tl.store(DLEFT + (b * (K - 1) + e[:, None]) * CH + cols[None, :], acc.to(DLEFT.dtype.element_ty),
                 mask=(e < K - 1)[:, None] & cmask[None, :])


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _blocks(c: int) -> tuple[int, int, dict]:
    return (8, 16, {}) if _interpreted() else (64, min(128, triton.next_power_of_2(c)), {"num_warps": 4})


class _TritonConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, left, sege, silu):
        b, t, c = x.shape
        k = weight.shape[1]
        bt, bc, opts = _blocks(c)
        y = empty_output((b, t, c), dtype=x.dtype, device=x.device)
        flags = dict(K=k, HAS_BIAS=bias is not None, HAS_LEFT=left is not None, HAS_DOC=sege is not None,
                     SILU=silu, BT=bt, BC=bc, **opts)
        dummy = weight
        conv_fwd_kernel[(triton.cdiv(t, bt), b, triton.cdiv(c, bc))](
            x, weight, bias if bias is not None else dummy, left if left is not None else dummy,
            sege if sege is not None else dummy, y, t, c, **flags)
        ctx.save_for_backward(x, weight, bias, left, sege)
        ctx.flags = flags
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, left, sege = ctx.saved_tensors
        f = ctx.flags
        b, t, c = x.shape
        k, bt, bc = f["K"], f["BT"], f["BC"]
        nt = triton.cdiv(t, bt)
        dev = x.device
        dz = empty_output((b, t, c), dtype=torch.float32, device=dev)
        dw_part = empty_output((b * nt, c, k), dtype=torch.float32, device=dev)
        db_part = empty_output((b * nt, c), dtype=torch.float32, device=dev) if bias is not None else dz
        dummy = weight
        conv_bwd_dz_kernel[(nt, b, triton.cdiv(c, bc))](
            x, weight, bias if bias is not None else dummy, left if left is not None else dummy,
            sege if sege is not None else dummy, dy.contiguous(), dz, dw_part, db_part, t, c, **f)
        dx = empty_output((b, t, c), dtype=x.dtype, device=dev)
        dleft = empty_output(left.shape, dtype=left.dtype, device=dev) if left is not None else None
        g = {key: f[key] for key in ("K", "HAS_LEFT", "HAS_DOC", "BT", "BC")}
        g.update({key: v for key, v in f.items() if key.startswith("num_")})
        conv_bwd_dx_kernel[(triton.cdiv(t + k - 1, bt), b, triton.cdiv(c, bc))](
            weight, sege if sege is not None else dummy, dz, dx, dleft if dleft is not None else dummy, t, c, **g)
        dw = dw_part.sum(0).to(weight.dtype)
        db = db_part.sum(0).to(bias.dtype) if bias is not None else None
        return dx, dw, db, dleft, None, None


def causal_conv1d_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    doc_ids: torch.Tensor | None = None,
    left_context: torch.Tensor | None = None,
    left_doc_ids: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """Same contract as causal_conv1d_reference; fp32 accumulation (float64 runs in fp32)."""
    if activation not in (None, "silu"):
        raise ValueError(f"causal_conv1d: activation {activation!r} must be None or 'silu'")
    if x.device.type == "cpu" and not _interpreted():
        raise RuntimeError("the Triton conv1d on CPU needs TRITON_INTERPRET=1 (or run on a CUDA device)")
    b, t, c = x.shape
    k = weight.shape[1]
    in_dtype = x.dtype
    if in_dtype == torch.float64:
        x, weight = x.float(), weight.float()
        bias = bias.float() if bias is not None else None
    left = None
    if left_context is not None and k > 1:
        left = left_context.to(x.dtype).contiguous()
    sege = None
    if doc_ids is not None:
        ldoc = doc_ids[:, :1].expand(b, k - 1) if left_doc_ids is None else left_doc_ids.to(doc_ids.dtype)
        sege = segment_ids(torch.cat([ldoc, doc_ids], dim=1)).to(torch.int32).contiguous()
    if t == 0:
        return x.new_zeros(b, 0, c).to(in_dtype)
    y = _TritonConv.apply(x.contiguous(), weight.contiguous(), bias.contiguous() if bias is not None else None,
                          left, sege, activation == "silu")
    return y.to(in_dtype)
