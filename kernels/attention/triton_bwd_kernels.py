"""Triton backward kernels for kernels.attention.triton: dQ (one program per query block and
head) and dK/dV (one program per key block and kv head, looping over the REP query heads that
share it, so GQA needs no atomics and no expanded K/V).

Both recompute P from the saved LSE (natural log, -inf for rows that see nothing; those rows
get p = 0). `delta` = rowsum(dO * O) - dLSE folds the LSE's own gradient into the usual
dS = P * (dP - delta), which is what the sequence-parallel LSE merge differentiates through.
"""
from __future__ import annotations

import triton
import triton.language as tl

from kernels.attention.triton_common import (
    _doc_block,
    _doc_overlap,
    _dot,
    _load_tile,
    _mask_scores,
    _query_block_keys,
    _query_program,
    _split_ranges,
)


@triton.jit
def _dq_range(dq, q, do, lse2, delta, K, V, KDOC, start, end, rows, offs_n, offs_d, TQ, TK, shift, window,
              qk_scale, qdoc, qdoc_min, qdoc_max, stride_kt, stride_vt,
              BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
              HAS_WINDOW: tl.constexpr, HAS_DOC: tl.constexpr, DOT_PREC: tl.constexpr):
    for start_n in range(start, end, BLOCK_N):
        cols = start_n + offs_n
        kdoc, go = _doc_overlap(KDOC, cols, TK, -1, qdoc_min, qdoc_max, HAS_DOC)
        if go:
            k = _load_tile(K, cols, offs_d, TK, stride_kt, MASKED, False)
            vt = _load_tile(V, cols, offs_d, TK, stride_vt, MASKED, True)
            s = _dot(q, tl.trans(k), DOT_PREC) * qk_scale
            s = _mask_scores(s, rows, cols, TQ, TK, shift, window, qdoc, kdoc, MASKED, MASKED, CAUSAL,
                             HAS_WINDOW, HAS_DOC)
            p = tl.math.exp2(s - lse2[:, None])
            dp = _dot(do, vt, DOT_PREC)
            ds = p * (dp - delta[:, None])
            dq += _dot(ds.to(k.dtype), k, DOT_PREC)
    return dq


@triton.jit
def attn_bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, QDOC, KDOC,
                       stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh,
                       stride_vb, stride_vt, stride_vh, stride_dob, stride_dot, stride_doh,
                       stride_dqb, stride_dqt, stride_dqh,
                       stride_qdb, stride_kdb, H, REP, TQ, TK, shift, window, qk_scale, sm_scale,
                       HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_DOC: tl.constexpr,
                       DOT_PREC: tl.constexpr):
    start_m, bh, b, h, hk, rows, offs_n, offs_d = _query_program(H, REP, BLOCK_M, BLOCK_N, HEAD_DIM)
    rmask = rows[:, None] < TQ
    q = tl.load(Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qt + offs_d[None, :], mask=rmask, other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + rows[:, None] * stride_dot + offs_d[None, :],
                 mask=rmask, other=0.0)
    lse = tl.load(LSE + bh.to(tl.int64) * TQ + rows, mask=rows < TQ, other=float("inf"))
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    delta = tl.load(DELTA + bh.to(tl.int64) * TQ + rows, mask=rows < TQ, other=0.0)
    K = K + b * stride_kb + hk * stride_kh
    V = V + b * stride_vb + hk * stride_vh
    if HAS_DOC:
        KDOC = KDOC + b * stride_kdb
    qdoc, qdoc_min, qdoc_max = _doc_block(QDOC + b * stride_qdb, rows, TQ, -2, HAS_DOC)
    lo0, first, last, hi = _query_block_keys(start_m, shift, window, TK, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    dq = _dq_range(dq, q, do, lse2, delta, K, V, KDOC, lo0, first, rows, offs_n, offs_d, TQ, TK, shift, window,
                   qk_scale, qdoc, qdoc_min, qdoc_max, stride_kt, stride_vt,
                   BLOCK_N, True, CAUSAL, HAS_WINDOW, HAS_DOC, DOT_PREC)
    dq = _dq_range(dq, q, do, lse2, delta, K, V, KDOC, first, last, rows, offs_n, offs_d, TQ, TK, shift, window,
                   qk_scale, qdoc, qdoc_min, qdoc_max, stride_kt, stride_vt,
                   BLOCK_N, False, CAUSAL, HAS_WINDOW, HAS_DOC, DOT_PREC)
    dq = _dq_range(dq, q, do, lse2, delta, K, V, KDOC, last, hi, rows, offs_n, offs_d, TQ, TK, shift, window,
                   qk_scale, qdoc, qdoc_min, qdoc_max, stride_kt, stride_vt,
                   BLOCK_N, True, CAUSAL, HAS_WINDOW, HAS_DOC, DOT_PREC)
    dq = dq * sm_scale
    tl.store(DQ + b * stride_dqb + h * stride_dqh + rows[:, None] * stride_dqt + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=rmask)


@triton.jit
def _dkdv_range(dk, dv, k, v, Q, DO, LSE, DELTA, QDOC, start, end, cols, offs_m, offs_d, TQ, TK, shift,
                window, qk_scale, kdoc, kdoc_min, kdoc_max, stride_qt, stride_dot,
                BLOCK_M: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                HAS_WINDOW: tl.constexpr, HAS_DOC: tl.constexpr, DOT_PREC: tl.constexpr):
    for start_m in range(start, end, BLOCK_M):
        rows = start_m + offs_m
        qdoc, go = _doc_overlap(QDOC, rows, TQ, -2, kdoc_min, kdoc_max, HAS_DOC)
        if go:
            rmask = rows < TQ
            qt = _load_tile(Q, rows, offs_d, TQ, stride_qt, MASKED, True)
            do = _load_tile(DO, rows, offs_d, TQ, stride_dot, MASKED, False)
            lse = tl.load(LSE + rows, mask=rmask, other=float("inf"))
            lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
            delta = tl.load(DELTA + rows, mask=rmask, other=0.0)
            st = _dot(k, qt, DOT_PREC) * qk_scale          # [BLOCK_N, BLOCK_M]
            st = _mask_scores(st, rows, cols, TQ, TK, shift, window, qdoc, kdoc, MASKED, MASKED, CAUSAL,
                              HAS_WINDOW, HAS_DOC, True)
            pt = tl.math.exp2(st - lse2[None, :])
            dv += _dot(pt.to(do.dtype), do, DOT_PREC)
            dpt = _dot(v, tl.trans(do), DOT_PREC)
            dst = pt * (dpt - delta[None, :])
            dk += _dot(dst.to(qt.dtype), tl.trans(qt), DOT_PREC)
    return dk, dv


@triton.jit
def attn_bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, QDOC, KDOC,
                         stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh,
                         stride_vb, stride_vt, stride_vh, stride_dob, stride_dot, stride_doh,
                         stride_dkb, stride_dkt, stride_dkh, stride_dvb, stride_dvt, stride_dvh,
                         stride_qdb, stride_kdb, H, HKV, REP, TQ, TK, shift, window, qk_scale, sm_scale,
                         HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_DOC: tl.constexpr,
                         DOT_PREC: tl.constexpr):
    start_n = tl.program_id(0) * BLOCK_N
    bhk = tl.program_id(1)
    b = (bhk // HKV).to(tl.int64)
    hk = bhk % HKV
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    cmask = cols[:, None] < TK
    k = tl.load(K + b * stride_kb + hk * stride_kh + cols[:, None] * stride_kt + offs_d[None, :], mask=cmask, other=0.0)
    v = tl.load(V + b * stride_vb + hk * stride_vh + cols[:, None] * stride_vt + offs_d[None, :], mask=cmask, other=0.0)
    if HAS_DOC:
        QDOC = QDOC + b * stride_qdb
    kdoc, kdoc_min, kdoc_max = _doc_block(KDOC + b * stride_kdb, cols, TK, -1, HAS_DOC)
    # query rows that see some key of [start_n, start_n + BLOCK_N), and those that see all of them
    lo = 0
    hi = TQ
    full_lo = 0
    full_hi = TQ
    if CAUSAL:
        lo = start_n - shift
        full_lo = start_n + BLOCK_N - 1 - shift
    if HAS_WINDOW:
        hi = tl.minimum(hi, start_n + BLOCK_N - 1 - shift + window)
        full_hi = start_n - shift + window
        if not CAUSAL:
            lo = start_n - shift - window + 1
            full_lo = start_n + BLOCK_N - shift - window
    full_hi = tl.minimum(full_hi, TQ)
    lo0, first, last, hi = _split_ranges(lo, hi, full_lo, full_hi, BLOCK_M)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    for r in range(0, REP):
        h = hk * REP + r
        bh = b * H + h
        Qh = Q + b * stride_qb + h * stride_qh
        DOh = DO + b * stride_dob + h * stride_doh
        LSEh = LSE + bh * TQ
        DELTAh = DELTA + bh * TQ
        dk, dv = _dkdv_range(dk, dv, k, v, Qh, DOh, LSEh, DELTAh, QDOC, lo0, first, cols, offs_m, offs_d, TQ, TK,
                             shift, window, qk_scale, kdoc, kdoc_min, kdoc_max, stride_qt, stride_dot,
                             BLOCK_M, True, CAUSAL, HAS_WINDOW, HAS_DOC, DOT_PREC)
        dk, dv = _dkdv_range(dk, dv, k, v, Qh, DOh, LSEh, DELTAh, QDOC, first, last, cols, offs_m, offs_d, TQ, TK,
                             shift, window, qk_scale, kdoc, kdoc_min, kdoc_max, stride_qt, stride_dot,
                             BLOCK_M, False, CAUSAL, HAS_WINDOW, HAS_DOC, DOT_PREC)
        dk, dv = _dkdv_range(dk, dv, k, v, Qh, DOh, LSEh, DELTAh, QDOC, last, hi, cols, offs_m, offs_d, TQ, TK,
                             shift, window, qk_scale, kdoc, kdoc_min, kdoc_max, stride_qt, stride_dot,
                             BLOCK_M, True, CAUSAL, HAS_WINDOW, HAS_DOC, DOT_PREC)
    dk = dk * sm_scale
    tl.store(DK + b * stride_dkb + hk * stride_dkh + cols[:, None] * stride_dkt + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=cmask)
    tl.store(DV + b * stride_dvb + hk * stride_dvh + cols[:, None] * stride_dvt + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=cmask)
