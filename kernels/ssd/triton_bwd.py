"""Triton backward of the chunked SSD (forward in kernels/ssd/triton_fwd.py).

  chunk_denter_kernel:  dL/d(state entering chunk c) from that chunk's outputs, (e ∘ dy)ᵀ C
  state_pass_bwd_kernel: reverse of the state passing: gradient of each chunk's added state,
                         of the initial state, and per-block partials of d(keep_c)
  chunk_bwd_kernel:     one program per (chunk, batch·group, head split): for each of its heads
                        recomputes C Bᵀ and the decays, then dx, ddt, dB, dC (summed over the
                        heads in registers, then over head splits in torch: no atomics) and the
                        gradient of the log-decay prefix S, turned into d(dt·A) by a reverse cumsum.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.dispatch import empty_output
from kernels.ssd.triton_fwd import _chunk_decays, _mm


@triton.jit
def chunk_denter_kernel(DY, DT, A, C, SEG, DED, T, H, G, P, N,
                        L: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, LOWP: tl.constexpr):
    c = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    g = h // (H // G)
    nc = tl.num_programs(0)
    rows, tok, valid, dt, a_h, s, seg, seg_last, seg_prev = _chunk_decays(DT, A, SEG, b, c, h, T, H, L)
    pp = tl.arange(0, BP)
    nn = tl.arange(0, BN)
    dy = tl.load(DY + ((b * T + tok[:, None]) * H + h) * P + pp[None, :], mask=valid[:, None] & (pp[None, :] < P),
                 other=0.0)
    cm = tl.load(C + ((b * T + tok[:, None]) * G + g) * N + nn[None, :], mask=valid[:, None] & (nn[None, :] < N),
                 other=0.0)
    e = tl.where(seg == seg_prev, tl.exp(s), 0.0)
    ded = _mm(tl.trans(dy.to(tl.float32) * e[:, None]), cm, LOWP, DY.dtype.element_ty)     # [BP, BN]
    tl.store(DED + (((b * nc + c) * H + h) * P + pp[:, None]) * N + nn[None, :], ded,
             mask=(pp[:, None] < P) & (nn[None, :] < N))


@triton.jit
def state_pass_bwd_kernel(DED, ENTER, KEEP, DFINAL, DCS, DKEEP_PART, DH0, NC, H, PN,
                          HAS_DFINAL: tl.constexpr, BLOCK: tl.constexpr):
    bh = tl.program_id(0)
    b = (bh // H).to(tl.int64)
    h = bh % H
    blk = tl.program_id(1)
    nblk = tl.num_programs(1)
    idx = blk * BLOCK + tl.arange(0, BLOCK)
    m = idx < PN
    grad = tl.zeros([BLOCK], dtype=tl.float32)            # dL/d(state after chunk c)
    if HAS_DFINAL:
        grad = tl.load(DFINAL + bh.to(tl.int64) * PN + idx, mask=m, other=0.0).to(tl.float32)
    off = ((b * NC + NC - 1) * H + h) * PN + idx
    ent = tl.load(ENTER + off, mask=m, other=0.0)
    ded = tl.load(DED + off, mask=m, other=0.0)
    keep = tl.load(KEEP + (b * NC + NC - 1) * H + h)
    for i in range(0, NC):
        c = NC - 1 - i
        # prefetch chunk c-1 before the dependent update (latency-bound loop)
        prv = ((b * NC + c - 1) * H + h) * PN + idx
        ent_p = tl.load(ENTER + prv, mask=m & (c > 0), other=0.0)
        ded_p = tl.load(DED + prv, mask=m & (c > 0), other=0.0)
        keep_p = tl.load(KEEP + (b * NC + c - 1) * H + h, mask=c > 0, other=0.0)
        tl.store(DCS + off, grad, mask=m)
        tl.store(DKEEP_PART + ((b * NC + c) * H + h) * nblk + blk, tl.sum(grad * ent, 0))
        grad = ded + keep * grad
        off, ent, ded, keep = prv, ent_p, ded_p, keep_p
    tl.store(DH0 + bh.to(tl.int64) * PN + idx, grad, mask=m)


@triton.jit
def chunk_bwd_kernel(X, DT, A, B, C, D, SEG, ENTER, DCS, KEEP, DKEEP, DY,
                     DX, DDT, DB, DC, DA_PART, DD_PART, T, H, G, P, N, HS, split_stride, HAS_D: tl.constexpr,
                     L: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, LOWP: tl.constexpr):
    c = tl.program_id(0)
    split = tl.program_id(1) % HS                 # heads of a group are split over HS programs
    bg = tl.program_id(1) // HS
    b = (bg // G).to(tl.int64)
    g = bg % G
    nc = tl.num_programs(0)
    rep = H // G
    per = rep // HS
    rows = tl.arange(0, L)
    tok = c * L + rows
    valid = tok < T
    pp = tl.arange(0, BP)
    nn = tl.arange(0, BN)
    pmask = valid[:, None] & (pp[None, :] < P)
    nmask = valid[:, None] & (nn[None, :] < N)
    smask = (pp[:, None] < P) & (nn[None, :] < N)
    bm = tl.load(B + ((b * T + tok[:, None]) * G + g) * N + nn[None, :], mask=nmask, other=0.0)
    cm = tl.load(C + ((b * T + tok[:, None]) * G + g) * N + nn[None, :], mask=nmask, other=0.0)
    cb = _mm(cm, tl.trans(bm), LOWP, X.dtype.element_ty)                                              # [L, L]
    db = tl.zeros([L, BN], dtype=tl.float32)
    dc = tl.zeros([L, BN], dtype=tl.float32)
    for r in range(split * per, split * per + per):
        h = g * rep + r
        rows, tok, valid, dt, a_h, s, seg, seg_last, seg_prev = _chunk_decays(DT, A, SEG, b, c, h, T, H, L)
        xy_off = ((b * T + tok[:, None]) * H + h) * P + pp[None, :]
        x = tl.load(X + xy_off, mask=pmask, other=0.0).to(tl.float32)
        dy = tl.load(DY + xy_off, mask=pmask, other=0.0).to(tl.float32)
        st_off = (((b * nc + c) * H + h) * P + pp[:, None]) * N + nn[None, :]
        hin = tl.load(ENTER + st_off, mask=smask, other=0.0)
        dcs = tl.load(DCS + st_off, mask=smask, other=0.0)
        xdt = x * dt[:, None]
        causal = (rows[:, None] >= rows[None, :]) & (seg[:, None] == seg[None, :])
        decay = tl.exp(tl.where(causal, s[:, None] - s[None, :], float("-inf")))
        e = tl.where(seg == seg_prev, tl.exp(s), 0.0)
        s_last = tl.sum(dt * a_h, 0)
        w = tl.where(seg == seg_last, tl.exp(s_last - s), 0.0)
        dcbm = _mm(dy, tl.trans(xdt), LOWP, X.dtype.element_ty) * decay                              # dL/d(C Bᵀ)
        dc += _mm(dcbm, bm, LOWP, X.dtype.element_ty) + e[:, None] * _mm(dy, hin, LOWP, X.dtype.element_ty)
        db += _mm(tl.trans(dcbm), cm, LOWP, X.dtype.element_ty) + w[:, None] * _mm(xdt, dcs, LOWP, X.dtype.element_ty)
        bd = _mm(bm, tl.trans(dcs), LOWP, X.dtype.element_ty)                                         # [L, BP]
        dxdt = _mm(tl.trans(cb * decay), dy, LOWP, X.dtype.element_ty) + w[:, None] * bd
        dmm = dcbm * cb
        ds = tl.sum(dmm, 1) - tl.sum(dmm, 0)
        ds += e * tl.sum(dy * _mm(cm, tl.trans(hin), LOWP, X.dtype.element_ty), 1)
        dw = w * tl.sum(xdt * bd, 1)
        keep = tl.load(KEEP + (b * nc + c) * H + h)
        dkeep = tl.load(DKEEP + (b * nc + c) * H + h)
        ds += tl.where(rows == L - 1, tl.sum(dw, 0) + keep * dkeep, 0.0) - dw
        da = tl.sum(ds, 0) - tl.cumsum(ds, 0) + ds                                    # reverse cumsum
        ddt = da * a_h + tl.sum(dxdt * x, 1)
        dx = dxdt * dt[:, None]
        if HAS_D:
            dx += tl.load(D + h).to(tl.float32) * dy
            tl.store(DD_PART + (b * nc + c) * H + h, tl.sum(tl.sum(dy * x, 1), 0))
        tl.store(DX + xy_off, dx.to(DX.dtype.element_ty), mask=pmask)
        tl.store(DDT + (b * T + tok) * H + h, ddt, mask=valid)
        tl.store(DA_PART + (b * nc + c) * H + h, tl.sum(da * dt, 0))
    bc_off = split.to(tl.int64) * split_stride + ((b * T + tok[:, None]) * G + g) * N + nn[None, :]
    tl.store(DB + bc_off, db, mask=nmask)
    tl.store(DC + bc_off, dc, mask=nmask)


def head_splits(rep: int, programs: int, target: int = 512) -> int:
    """How many programs share one (chunk, group)'s heads: enough programs to fill the GPU at
    short T (few chunks), 1 at long T (no partial dB/dC sums to add up)."""
    hs = 1
    while hs < rep and rep % (2 * hs) == 0 and programs * hs < target:
        hs *= 2
    return hs


def state_gradients(dy, dfinal, x, dt, A, C, seg, enter, keep, L, *, lowp: bool, warps: dict):
    """The part every SSD backward shares: gradients of the chunk-entry states (the output's
    dependence through C, then passed back along the chunks, with dfinal) -> (dy made contiguous,
    dcs [B, nc, H, P, N], dkeep [B, nc, H], dh0 [B, H, P, N]), all fp32."""
    b, t, h, p = x.shape
    g, n = C.shape[2], C.shape[3]
    nc = enter.shape[1]
    bp, bn = max(16, triton.next_power_of_2(p)), max(16, triton.next_power_of_2(n))
    dy = torch.zeros_like(x) if dy is None else dy.contiguous()
    dev = x.device
    ded = empty_output((b, nc, h, p, n), dtype=torch.float32, device=dev)
    chunk_denter_kernel[(nc, b * h)](dy, dt, A, C, seg, ded, t, h, g, p, n, L=L, BP=bp, BN=bn, LOWP=lowp, **warps)
    block = 256
    nblk = triton.cdiv(p * n, block)
    dcs = empty_output((b, nc, h, p, n), dtype=torch.float32, device=dev)
    dkeep_part = empty_output((b, nc, h, nblk), dtype=torch.float32, device=dev)
    dh0 = empty_output((b, h, p, n), dtype=torch.float32, device=dev)
    state_pass_bwd_kernel[(b * h, nblk)](
        ded, enter, keep, dfinal.contiguous() if dfinal is not None else ded, dcs, dkeep_part, dh0, nc, h, p * n,
        HAS_DFINAL=dfinal is not None, BLOCK=block)
    return dy, dcs, dkeep_part.sum(-1).contiguous(), dh0


def ssd_backward(dy, dfinal, x, dt, A, B, C, D, h0, seg, enter, keep, L, *, lowp: bool, warps: dict):
    """Gradients (dx, ddt, dA, dB, dC, dD, dh0) of ssd_triton's outputs (y, final state)."""
    b, t, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    nc = enter.shape[1]
    bp, bn = max(16, triton.next_power_of_2(p)), max(16, triton.next_power_of_2(n))
    dev = x.device
    common = dict(L=L, BP=bp, BN=bn, LOWP=lowp, **warps)
    dy, dcs, dkeep, dh0 = state_gradients(dy, dfinal, x, dt, A, C, seg, enter, keep, L, lowp=lowp, warps=warps)
    dx = empty_output(x.shape, dtype=x.dtype, device=dev)
    ddt = empty_output((b, t, h), dtype=torch.float32, device=dev)
    hs = head_splits(h // g, nc * b * g)
    db = empty_output((hs, b, t, g, n), dtype=torch.float32, device=dev)
    dc = empty_output((hs, b, t, g, n), dtype=torch.float32, device=dev)
    da_part = empty_output((b, nc, h), dtype=torch.float32, device=dev)
    dd_part = empty_output((b, nc, h), dtype=torch.float32, device=dev)
    chunk_bwd_kernel[(nc, b * g * hs)](
        x, dt, A, B, C, D if D is not None else A, seg, enter, dcs, keep, dkeep, dy,
        dx, ddt, db, dc, da_part, dd_part, t, h, g, p, n, hs, b * t * g * n, HAS_D=D is not None, **common)
    db, dc = db.sum(0), dc.sum(0)
    dD = dd_part.sum((0, 1)).to(D.dtype) if D is not None else None
    return (dx, ddt.to(dt.dtype), da_part.sum((0, 1)).to(A.dtype), db.to(B.dtype), dc.to(C.dtype), dD,
            dh0.to(h0.dtype) if h0 is not None else None)
