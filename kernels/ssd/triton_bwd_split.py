"""Split Triton backward of the chunked SSD: one small kernel per gradient, each a grid over
(chunk, batch·head) or (chunk, batch·group, head split), candidate for long T.

Why: the fused backward (kernels/ssd/triton_bwd.py) computes dx, ddt, dB and dC in one program
per (chunk, group) that walks the group's heads with all tiles live at once (~200 KB of shared
memory on an H100, one program per SM). Here the same sums are cut into launches that each keep
fewer tiles live, so more programs fit on an SM (the decomposition mamba-ssm uses):
  1. chunk_denter_kernel, state_pass_bwd_kernel (shared with the fused path): dL/d(state
     entering chunk c), reverse state passing -> dL/d(chunk state c), d(keep_c), d(initial state);
  2. chunk_dx_kernel, grid (chunk, batch·head): dx, ddt, and per-program partials of dA and dD
     (every term of one head in one chunk; recomputes C Bᵀ and the decays);
  3. chunk_dbc_kernel, launched twice (dC, then dB), grid (chunk, batch·group·head split): sums
     the group's heads' contributions in registers, head splits added in torch (no atomics).
Only state_pass_bwd_kernel walks the chunks of a sequence, on [p·n] fp32 vectors.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels.dispatch import empty_output
from kernels.ssd.triton_bwd import head_splits, state_gradients
from kernels.ssd.triton_fwd import _chunk_decays, _mm


@triton.jit
def chunk_dx_kernel(X, DT, A, B, C, D, SEG, ENTER, DCS, KEEP, DKEEP, DY, DX, DDT, DA_PART, DD_PART,
                    T, H, G, P, N, HAS_D: tl.constexpr,
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
    pmask = valid[:, None] & (pp[None, :] < P)
    nmask = valid[:, None] & (nn[None, :] < N)
    smask = (pp[:, None] < P) & (nn[None, :] < N)
    bm = tl.load(B + ((b * T + tok[:, None]) * G + g) * N + nn[None, :], mask=nmask, other=0.0)
    cm = tl.load(C + ((b * T + tok[:, None]) * G + g) * N + nn[None, :], mask=nmask, other=0.0)
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
    cb = _mm(cm, tl.trans(bm), LOWP, X.dtype.element_ty)                                  # [L, L]
    dcbm = _mm(dy, tl.trans(xdt), LOWP, X.dtype.element_ty) * decay                       # dL/d(C Bᵀ)
    bd = _mm(bm, tl.trans(dcs), LOWP, X.dtype.element_ty)                                 # [L, BP]
    dxdt = _mm(tl.trans(cb * decay), dy, LOWP, X.dtype.element_ty) + w[:, None] * bd
    dmm = dcbm * cb
    ds = tl.sum(dmm, 1) - tl.sum(dmm, 0)
    ds += e * tl.sum(dy * _mm(cm, tl.trans(hin), LOWP, X.dtype.element_ty), 1)
    dw = w * tl.sum(xdt * bd, 1)
    keep = tl.load(KEEP + (b * nc + c) * H + h)
    dkeep = tl.load(DKEEP + (b * nc + c) * H + h)
    ds += tl.where(rows == L - 1, tl.sum(dw, 0) + keep * dkeep, 0.0) - dw
    da = tl.sum(ds, 0) - tl.cumsum(ds, 0) + ds                                            # reverse cumsum
    ddt = da * a_h + tl.sum(dxdt * x, 1)
    dx = dxdt * dt[:, None]
    if HAS_D:
        dx += tl.load(D + h).to(tl.float32) * dy
        tl.store(DD_PART + (b * nc + c) * H + h, tl.sum(tl.sum(dy * x, 1), 0))
    tl.store(DX + xy_off, dx.to(DX.dtype.element_ty), mask=pmask)
    tl.store(DDT + (b * T + tok) * H + h, ddt, mask=valid)
    tl.store(DA_PART + (b * nc + c) * H + h, tl.sum(da * dt, 0))


@triton.jit
def chunk_dbc_kernel(X, DT, A, SEG, OTHER, STATE, DY, OUT, T, H, G, P, N, HS, split_stride,
                     WANT_DB: tl.constexpr, L: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                     LOWP: tl.constexpr):
    """dC (WANT_DB false: OTHER = B, STATE = entering states) or dB (OTHER = C, STATE = dL/d chunk
    state) of one chunk and BN of the N state columns (grid axis 2: columns are independent, so a
    narrower BN trades recomputing dy (dt∘x)ᵀ for fewer live registers and less shared memory),
    summed over this program's share of the group's heads:
      dC = Σ_h (dy (dt∘x)ᵀ ∘ decay) B + e ∘ dy H_inᵀ,   dB = Σ_h (...)ᵀ C + w ∘ (dt∘x) dH_c."""
    c = tl.program_id(0)
    split = tl.program_id(1) % HS
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
    nn = tl.program_id(2) * BN + tl.arange(0, BN)
    pmask = valid[:, None] & (pp[None, :] < P)
    nmask = valid[:, None] & (nn[None, :] < N)
    smask = (pp[:, None] < P) & (nn[None, :] < N)
    other = tl.load(OTHER + ((b * T + tok[:, None]) * G + g) * N + nn[None, :], mask=nmask, other=0.0)
    acc = tl.zeros([L, BN], dtype=tl.float32)
    for r in range(split * per, split * per + per):
        h = g * rep + r
        rows, tok, valid, dt, a_h, s, seg, seg_last, seg_prev = _chunk_decays(DT, A, SEG, b, c, h, T, H, L)
        xy_off = ((b * T + tok[:, None]) * H + h) * P + pp[None, :]
        xdt = tl.load(X + xy_off, mask=pmask, other=0.0).to(tl.float32) * dt[:, None]
        dy = tl.load(DY + xy_off, mask=pmask, other=0.0).to(tl.float32)
        st = tl.load(STATE + (((b * nc + c) * H + h) * P + pp[:, None]) * N + nn[None, :], mask=smask, other=0.0)
        causal = (rows[:, None] >= rows[None, :]) & (seg[:, None] == seg[None, :])
        decay = tl.exp(tl.where(causal, s[:, None] - s[None, :], float("-inf")))
        dcbm = _mm(dy, tl.trans(xdt), LOWP, X.dtype.element_ty) * decay
        if WANT_DB:
            w = tl.where(seg == seg_last, tl.exp(tl.sum(dt * a_h, 0) - s), 0.0)
            acc += _mm(tl.trans(dcbm), other, LOWP, X.dtype.element_ty)
            acc += w[:, None] * _mm(xdt, st, LOWP, X.dtype.element_ty)
        else:
            e = tl.where(seg == seg_prev, tl.exp(s), 0.0)
            acc += _mm(dcbm, other, LOWP, X.dtype.element_ty) + e[:, None] * _mm(dy, st, LOWP, X.dtype.element_ty)
    out = split.to(tl.int64) * split_stride + ((b * T + tok[:, None]) * G + g) * N + nn[None, :]
    tl.store(OUT + out, acc, mask=nmask)


def split_tiles(bn: int, warps: dict) -> tuple[dict, int, dict]:
    """(dx launch options, state columns per dB/dC program, dB/dC launch options):
    LONGWEAVE_SSD_SPLIT_TILES='DX_WARPS,DBC_COLUMNS,DBC_WARPS' (for the benchmark's sweep), else the
    caller's warps and 64 columns (`benchmarks/kernels.py --static`, offline sm_90, N=128, 8 warps:
    137 KB of shared memory and spills at 128 columns, 89 KB and none at 64). The interpreter
    (warps == {}) takes the columns only."""
    spec = os.environ.get("LONGWEAVE_SSD_SPLIT_TILES", "")
    if not spec:
        return dict(warps), min(bn, 64), dict(warps)
    dx_warps, cols, dbc_warps = (int(v) for v in spec.split(","))
    pick = (lambda w: {"num_warps": w}) if warps else (lambda w: {})
    return pick(dx_warps), min(bn, max(16, cols)), pick(dbc_warps)


def ssd_backward_split(dy, dfinal, x, dt, A, B, C, D, h0, seg, enter, keep, L, *, lowp: bool, warps: dict):
    """Gradients (dx, ddt, dA, dB, dC, dD, dh0) of ssd_triton's outputs, as
    kernels/ssd/triton_bwd.py:ssd_backward returns them, from the split kernels."""
    b, t, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    nc = enter.shape[1]
    bp, bn = max(16, triton.next_power_of_2(p)), max(16, triton.next_power_of_2(n))
    dev = x.device
    dy, dcs, dkeep, dh0 = state_gradients(dy, dfinal, x, dt, A, C, seg, enter, keep, L, lowp=lowp, warps=warps)
    dx = empty_output(x.shape, dtype=x.dtype, device=dev)
    ddt = empty_output((b, t, h), dtype=torch.float32, device=dev)
    da_part = empty_output((b, nc, h), dtype=torch.float32, device=dev)
    dd_part = empty_output((b, nc, h), dtype=torch.float32, device=dev)
    dx_opts, bn_cols, dbc_opts = split_tiles(bn, warps)
    chunk_dx_kernel[(nc, b * h)](
        x, dt, A, B, C, D if D is not None else A, seg, enter, dcs, keep, dkeep, dy,
        dx, ddt, da_part, dd_part, t, h, g, p, n, HAS_D=D is not None, L=L, BP=bp, BN=bn, LOWP=lowp, **dx_opts)
    hs = head_splits(h // g, nc * b * g)
    grads = []
    for want_db, other, state in ((False, B, enter), (True, C, dcs)):
        out = empty_output((hs, b, t, g, n), dtype=torch.float32, device=dev)
        chunk_dbc_kernel[(nc, b * g * hs, triton.cdiv(n, bn_cols))](
            x, dt, A, seg, other, state, dy, out, t, h, g, p, n, hs, b * t * g * n,
            WANT_DB=want_db, L=L, BP=bp, BN=bn_cols, LOWP=lowp, **dbc_opts)
        grads.append(out.sum(0))
    dc, db = grads
    dD = dd_part.sum((0, 1)).to(D.dtype) if D is not None else None
    return (dx, ddt.to(dt.dtype), da_part.sum((0, 1)).to(A.dtype), db.to(B.dtype), dc.to(C.dtype), dD,
            dh0.to(h0.dtype) if h0 is not None else None)
