"""Triton helpers shared by the attention forward (triton_kernels.py) and backward
(triton_bwd_kernels.py) kernels: the block ranges a sweep visits, the visibility mask, the
document-id block skip and the dot product precision. Like flash-linear-attention's
ops/common: one place for what both directions must agree on.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _dot(a, b, DOT_PREC: tl.constexpr):
    """tl.dot; "upcast" multiplies bf16 tiles as exact fp32 copies (the CPU interpreter's bf16
    dot is broken in Triton 3.7; products of bf16 values are exact in fp32, so numerics match)."""
    if DOT_PREC == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=DOT_PREC)


@triton.jit
def _split_ranges(lo, hi, full_lo, full_hi, BLOCK: tl.constexpr):
    """Block-aligned [lo0, first) masked, [first, last) unmasked, [last, hi) masked."""
    lo0 = (tl.maximum(lo, 0) // BLOCK) * BLOCK
    hi = tl.maximum(hi, lo0)
    first = lo0 + tl.cdiv(tl.maximum(full_lo - lo0, 0), BLOCK) * BLOCK
    last = lo0 + (tl.maximum(full_hi - lo0, 0) // BLOCK) * BLOCK
    if last <= first:
        first = lo0 + tl.cdiv(hi - lo0, BLOCK) * BLOCK
        last = first
    return lo0, first, last, hi


@triton.jit
def _doc_block(DOC, idx, N, other, HAS_DOC: tl.constexpr):
    """Doc ids of positions idx (`other` past N) and their min/max, to skip blocks of other documents."""
    ids = idx
    lo = 0
    hi = 0
    if HAS_DOC:
        ids = tl.load(DOC + idx, mask=idx < N, other=other)
        lo = tl.min(tl.where(idx < N, ids, 2147483647), 0)
        hi = tl.max(ids, 0)
    return ids, lo, hi


@triton.jit
def _query_block_keys(start_m, shift, window, TK, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Key blocks for query rows [start_m, start_m + BLOCK_M): (lo0, first, last, hi) as in
    _split_ranges — keys some row sees, and the middle part every row sees in full."""
    lo = 0
    hi = TK
    full_lo = 0
    full_hi = TK
    if CAUSAL:
        hi = tl.minimum(hi, shift + start_m + BLOCK_M)
        full_hi = shift + start_m + 1
    if HAS_WINDOW:
        lo = shift + start_m - window + 1
        full_lo = shift + start_m + BLOCK_M - window
        if not CAUSAL:
            hi = tl.minimum(hi, shift + start_m + BLOCK_M - 1 + window)
            full_hi = shift + start_m + window
    full_hi = tl.minimum(full_hi, TK)
    return _split_ranges(lo, hi, full_lo, full_hi, BLOCK_N)


@triton.jit
def _mask_scores(s, rows, cols, NR, NC, shift, window, row_doc, col_doc,
                 BOUNDS: tl.constexpr, MASK_POS: tl.constexpr, CAUSAL: tl.constexpr,
                 HAS_WINDOW: tl.constexpr, HAS_DOC: tl.constexpr, TRANS: tl.constexpr = False):
    """-inf where (query i = rows, key j = cols) is invisible; diff = shift + i - j.

    s is [rows, cols], or [cols, rows] with TRANS (the dK/dV kernel keeps keys as rows)."""
    if TRANS:
        qi = rows[None, :]
        kj = cols[:, None]
        qd = row_doc[None, :]
        kd = col_doc[:, None]
    else:
        qi = rows[:, None]
        kj = cols[None, :]
        qd = row_doc[:, None]
        kd = col_doc[None, :]
    if BOUNDS:
        s = tl.where((qi < NR) & (kj < NC), s, float("-inf"))
    if MASK_POS:
        diff = shift + qi - kj
        if CAUSAL:
            s = tl.where(diff >= 0, s, float("-inf"))
        if HAS_WINDOW:
            if CAUSAL:
                s = tl.where(diff < window, s, float("-inf"))
            else:
                s = tl.where((diff < window) & (diff > -window), s, float("-inf"))
    if HAS_DOC:
        s = tl.where(qd == kd, s, float("-inf"))
    return s


@triton.jit
def _doc_overlap(DOC, idx, N, other, lo, hi, HAS_DOC: tl.constexpr):
    """(doc ids of positions idx, whether the block may share a document with ids in [lo, hi]).

    Packed rows: a block whose ids all lie outside the other side's [lo, hi] sees nothing and is
    skipped whole. Without doc ids every block goes ahead (the ids are then just `lo`)."""
    ids = lo
    go = True
    if HAS_DOC:
        ids = tl.load(DOC + idx, mask=idx < N, other=other)
        valid = tl.where(idx < N, ids, lo)
        go = (tl.max(valid, 0) >= lo) & (tl.min(valid, 0) <= hi)
    return ids, go


@triton.jit
def _query_program(H, REP, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
    """A query-block program's coordinates: (start_m, b·H + h, b, h, kv head, rows, key offsets,
    head-dim offsets); grid = (query blocks, batch · heads)."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    return (start_m, bh, b, h, h // REP, start_m + tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N),
            tl.arange(0, HEAD_DIM))


@triton.jit
def _load_tile(ptr, cols, offs_d, N, stride, MASKED: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Rows `cols` of a [N, D] operand with unit stride on D, as [len(cols), D] or (TRANSPOSED)
    [D, len(cols)]; with MASKED, rows at or past N read as 0 (the last, partial key block)."""
    if TRANSPOSED:
        ptrs = ptr + cols[None, :] * stride + offs_d[:, None]
        inside = cols[None, :] < N
    else:
        ptrs = ptr + cols[:, None] * stride + offs_d[None, :]
        inside = cols[:, None] < N
    if MASKED:
        tile = tl.load(ptrs, mask=inside, other=0.0)
    else:
        tile = tl.load(ptrs)
    return tile
