"""Triton forward kernels of the chunked SSD (see kernels/ssd/chunked.py for the algorithm).

Three launches, one program per (chunk, batch·head) or (batch·head, state block):
  chunk_state_kernel:  what chunk c adds to the state at its end, (w ∘ dt ∘ x)ᵀ B   [p, n]
  state_pass_kernel:   H_c = keep_c · H_{c-1} + chunk_state_c, sequential over chunks (fp32)
  chunk_out_kernel:    y = ((C Bᵀ) ∘ decay ∘ same-doc) (dt ∘ x) + e ∘ (C H_{c-1}ᵀ) + D x
The in-chunk log-decay prefix S = cumsum(dt·A) is recomputed in every kernel (L floats),
never stored. Segment ids (kernels/segments.py) give the document masks: two positions interact
only inside one segment, the carried state only reaches tokens of the segment it belongs to.
Padded tokens (past T) load as zeros, so dt = 0: no decay and no input.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _mm(a, b, LOWP: tl.constexpr, DT: tl.constexpr):
    """Matrix product with fp32 accumulation: bf16/fp16 operands (LOWP) or exact fp32."""
    if LOWP:
        return tl.dot(a.to(DT), b.to(DT))
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")


@triton.jit
def _chunk_decays(DT, A, SEG, b, c, h, T, H, L: tl.constexpr):
    """dt [L], in-chunk cumulative log-decay S [L], segment ids of the chunk's tokens, of its
    last token and of the token carried in (the one before the chunk; token 0 for chunk 0)."""
    rows = tl.arange(0, L)
    tok = c * L + rows
    valid = tok < T
    dt = tl.load(DT + (b * T + tok) * H + h, mask=valid, other=0.0).to(tl.float32)
    a_h = tl.load(A + h).to(tl.float32)
    s = tl.cumsum(dt * a_h, 0)
    seg = tl.load(SEG + b * T + tl.minimum(tok, T - 1))
    seg_last = tl.load(SEG + b * T + tl.minimum(c * L + L - 1, T - 1))
    seg_prev = tl.load(SEG + b * T + tl.maximum(c * L - 1, 0))
    return rows, tok, valid, dt, a_h, s, seg, seg_last, seg_prev


@triton.jit
def chunk_state_kernel(X, DT, A, B, SEG, CS, T, H, G, P, N,
                       L: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, LOWP: tl.constexpr):
    c = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    g = h // (H // G)
    nc = tl.num_programs(0)
    rows, tok, valid, dt, a_h, s, seg, seg_last, seg_prev = _chunk_decays(DT, A, SEG, b, c, h, T, H, L)
    s_last = tl.sum(dt * a_h, 0)
    w = tl.where(seg == seg_last, tl.exp(s_last - s), 0.0) * dt
    pp = tl.arange(0, BP)
    nn = tl.arange(0, BN)
    x = tl.load(X + ((b * T + tok[:, None]) * H + h) * P + pp[None, :], mask=valid[:, None] & (pp[None, :] < P),
                other=0.0)
    bm = tl.load(B + ((b * T + tok[:, None]) * G + g) * N + nn[None, :], mask=valid[:, None] & (nn[None, :] < N),
                 other=0.0)
    cs = _mm(tl.trans(x.to(tl.float32) * w[:, None]), bm, LOWP, X.dtype.element_ty)     # [BP, BN]
    out = CS + (((b * nc + c) * H + h) * P + pp[:, None]) * N + nn[None, :]
    tl.store(out, cs, mask=(pp[:, None] < P) & (nn[None, :] < N))


@triton.jit
def state_pass_kernel(CS, KEEP, H0, ENTER, FINAL, NC, H, PN, HAS_H0: tl.constexpr, BLOCK: tl.constexpr):
    """ENTER[b, c] = state before chunk c; FINAL = state after the last chunk (all fp32)."""
    bh = tl.program_id(0)
    b = (bh // H).to(tl.int64)
    h = bh % H
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = idx < PN
    state = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_H0:
        state = tl.load(H0 + bh.to(tl.int64) * PN + idx, mask=m, other=0.0).to(tl.float32)
    off = (b * NC * H + h) * PN + idx
    cs = tl.load(CS + off, mask=m, other=0.0)
    keep = tl.load(KEEP + b * NC * H + h)
    for c in range(0, NC):
        # prefetch chunk c+1 before the dependent update: the loop is latency-bound otherwise
        nxt = ((b * NC + c + 1) * H + h) * PN + idx
        cs_next = tl.load(CS + nxt, mask=m & (c + 1 < NC), other=0.0)
        keep_next = tl.load(KEEP + (b * NC + c + 1) * H + h, mask=c + 1 < NC, other=0.0)
        tl.store(ENTER + off, state, mask=m)
        state = keep * state + cs
        off, cs, keep = nxt, cs_next, keep_next
    tl.store(FINAL + bh.to(tl.int64) * PN + idx, state, mask=m)


@triton.jit
def chunk_out_kernel(X, DT, A, B, C, D, SEG, ENTER, Y, T, H, G, P, N, HAS_D: tl.constexpr,
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
    x = tl.load(X + ((b * T + tok[:, None]) * H + h) * P + pp[None, :], mask=pmask, other=0.0)
    bm = tl.load(B + ((b * T + tok[:, None]) * G + g) * N + nn[None, :], mask=nmask, other=0.0)
    cm = tl.load(C + ((b * T + tok[:, None]) * G + g) * N + nn[None, :], mask=nmask, other=0.0)
    hin = tl.load(ENTER + (((b * nc + c) * H + h) * P + pp[:, None]) * N + nn[None, :],
                  mask=(pp[:, None] < P) & (nn[None, :] < N), other=0.0)               # [BP, BN] fp32
    cb = _mm(cm, tl.trans(bm), LOWP, X.dtype.element_ty)                              # [L, L]
    keep = (rows[:, None] >= rows[None, :]) & (seg[:, None] == seg[None, :])
    decay = tl.exp(tl.where(keep, s[:, None] - s[None, :], float("-inf")))
    xdt = x.to(tl.float32) * dt[:, None]
    y = _mm(cb * decay, xdt, LOWP, X.dtype.element_ty)                                # [L, BP]
    e = tl.where(seg == seg_prev, tl.exp(s), 0.0)
    y += e[:, None] * _mm(cm, tl.trans(hin), LOWP, X.dtype.element_ty)
    if HAS_D:
        y += tl.load(D + h).to(tl.float32) * x.to(tl.float32)
    tl.store(Y + ((b * T + tok[:, None]) * H + h) * P + pp[None, :], y.to(Y.dtype.element_ty), mask=pmask)
