"""Triton kernels for FlashAttention-style attention: forward (with LSE), dQ, dK/dV.

Imported only when the Triton path runs (kernels.attention.triton), so TRITON_INTERPRET can be
set before `triton.jit` sees these functions. Layout: q [B, Tq, H, D], k/v [B, Tk, Hkv, D] with a
unit stride on D; query head h reads kv head h // REP (GQA/MQA without expanding K/V).

Visibility follows kernels/attention/masks.py exactly, with diff = (q_offset + i) - (k_offset + j):
causal diff >= 0; window diff < window (and diff > -window without causal); equal doc ids.
Every loop over the other side's blocks is split into [masked | unmasked | masked] ranges so the
bulk of a causal/windowed sweep skips the per-element mask math; blocks whose document-id ranges
cannot overlap are skipped entirely (packed rows: most cross-document work disappears).
A query row that sees no key gets o = 0 and lse = -inf; its gradients are 0.
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
)


@triton.jit
def _fwd_range(acc, l_i, m_i, q, K, V, KDOC, start, end, rows, offs_n, offs_d, TQ, TK, shift, window,
               qk_scale, qdoc, qdoc_min, qdoc_max, stride_kt, stride_vt,
               BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
               HAS_WINDOW: tl.constexpr, HAS_DOC: tl.constexpr, DOT_PREC: tl.constexpr):
    for start_n in range(start, end, BLOCK_N):
        cols = start_n + offs_n
        kdoc, go = _doc_overlap(KDOC, cols, TK, -1, qdoc_min, qdoc_max, HAS_DOC)
        if go:
            kt = _load_tile(K, cols, offs_d, TK, stride_kt, MASKED, True)
            v = _load_tile(V, cols, offs_d, TK, stride_vt, MASKED, False)
            s = _dot(q, kt, DOT_PREC) * qk_scale
            s = _mask_scores(s, rows, cols, TQ, TK, shift, window, qdoc, kdoc, MASKED, MASKED, CAUSAL,
                             HAS_WINDOW, HAS_DOC)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_PREC)
            m_i = m_new
    return acc, l_i, m_i


@triton.jit
def attn_fwd_kernel(Q, K, V, OUT, LSE, QDOC, KDOC,
                    stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh,
                    stride_vb, stride_vt, stride_vh, stride_ob, stride_ot, stride_oh,
                    stride_qdb, stride_kdb, H, REP, TQ, TK, shift, window, qk_scale,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_DOC: tl.constexpr,
                    DOT_PREC: tl.constexpr):
    start_m, bh, b, h, hk, rows, offs_n, offs_d = _query_program(H, REP, BLOCK_M, BLOCK_N, HEAD_DIM)
    Q = Q + b * stride_qb + h * stride_qh
    K = K + b * stride_kb + hk * stride_kh
    V = V + b * stride_vb + hk * stride_vh
    q = tl.load(Q + rows[:, None] * stride_qt + offs_d[None, :], mask=rows[:, None] < TQ, other=0.0)
    if HAS_DOC:
        KDOC = KDOC + b * stride_kdb
    qdoc, qdoc_min, qdoc_max = _doc_block(QDOC + b * stride_qdb, rows, TQ, -2, HAS_DOC)
    # key range visible to rows [start_m, start_m + BLOCK_M) and the part visible to all of them
    lo0, first, last, hi = _query_block_keys(start_m, shift, window, TK, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    acc, l_i, m_i = _fwd_range(acc, l_i, m_i, q, K, V, KDOC, lo0, first, rows, offs_n, offs_d, TQ, TK,
                               shift, window, qk_scale, qdoc, qdoc_min, qdoc_max, stride_kt, stride_vt,
                               BLOCK_N, True, CAUSAL, HAS_WINDOW, HAS_DOC, DOT_PREC)
    acc, l_i, m_i = _fwd_range(acc, l_i, m_i, q, K, V, KDOC, first, last, rows, offs_n, offs_d, TQ, TK,
                               shift, window, qk_scale, qdoc, qdoc_min, qdoc_max, stride_kt, stride_vt,
                               BLOCK_N, False, CAUSAL, HAS_WINDOW, HAS_DOC, DOT_PREC)
    acc, l_i, m_i = _fwd_range(acc, l_i, m_i, q, K, V, KDOC, last, hi, rows, offs_n, offs_d, TQ, TK,
                               shift, window, qk_scale, qdoc, qdoc_min, qdoc_max, stride_kt, stride_vt,
                               BLOCK_N, True, CAUSAL, HAS_WINDOW, HAS_DOC, DOT_PREC)
    empty = l_i == 0.0
    o = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) / 1.4426950408889634)
    OUT = OUT + b * stride_ob + h * stride_oh
    tl.store(OUT + rows[:, None] * stride_ot + offs_d[None, :], o.to(OUT.dtype.element_ty), mask=rows[:, None] < TQ)
    tl.store(LSE + bh.to(tl.int64) * TQ + rows, lse, mask=rows < TQ)
