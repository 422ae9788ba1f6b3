"""Candidate Triton linear scan h_t = a_t ⊙ h_{t-1} + x_t with chained carries ('lookback').

Why: the tiled kernel (kernels/rglru/triton.py) gives each program a strip of channels and walks
all of T, loading one small tile at a time, so few bytes are in flight per SM (measured 44-71% of
copy bandwidth on an H100). Here every program owns ONE [BLOCK_T, BLOCK_D] tile (wide rows of
contiguous channels), loads it at once and scans it; only the tile's carry-in waits on the
previous tile in time, which publishes its last state to a small buffer as soon as it has it
(before writing its own outputs). So the whole grid's loads are issued together and the serial
part is one [BLOCK_D] fp32 vector hand-off per tile. a and x are still read once, h written once.

Ordering: programs take a ticket (atomic counter) and derive (time tile, row, channel block) from
it in time-major order, so a tile's predecessor always started earlier and no wait can deadlock,
whatever order the hardware (or the interpreter) schedules programs in. The carry buffer is int32
pre-filled with a NaN pattern no arithmetic produces (SENTINEL); a carry is stored as its fp32
bits (NaN canonicalised), so the value itself says it has arrived and no flag/fence is needed.
Backward runs the same scheme backwards in time on g_t = dh_t + a'_{t+1}·g_{t+1}; then
da_t = g_t·h_{t-1}·[no reset], dx_t = g_t, dh0 = a_0·g_0 (as kernels/rglru/triton.py).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels.dispatch import empty_output
from kernels.rglru.triton import _combine, _interpreted, grad_buffers, run_scan

SENTINEL = tl.constexpr(0x7FBADBAD)       # int32 bits of a NaN payload no arithmetic produces
CANONICAL_NAN = tl.constexpr(0x7FC00000)
MAX_SPINS = tl.constexpr(1 << 22)


@triton.jit
def _wait_carry(CARRY, off, cmask):
    """Spin until the predecessor tile has published all of this block's carries; fp32 values.
    Bounded: after MAX_SPINS polls (far beyond a tile's latency) it gives up, and the sentinel, a
    NaN, flows into the outputs, so a scheduling bug shows as NaN in the tests instead of a hang."""
    v = tl.load(CARRY + off, mask=cmask, other=0, volatile=True)
    spins = 0
    while (tl.max(tl.where(v == SENTINEL, 1, 0), 0) > 0) & (spins < MAX_SPINS):
        v = tl.load(CARRY + off, mask=cmask, other=0, volatile=True)
        spins += 1
    return v.to(tl.float32, bitcast=True)


@triton.jit
def _publish_carry(CARRY, off, cmask, val):
    bits = val.to(tl.int32, bitcast=True)
    tl.store(CARRY + off, tl.where(val != val, CANONICAL_NAN, bits), mask=cmask)


@triton.jit
def _tile(TICKET, D, COLS, NDB, BLOCK_D: tl.constexpr):
    """(time tile k, batch row b, channel indices, channel mask) of the next ticket."""
    vid = tl.atomic_add(TICKET, 1)
    k = vid // COLS
    col = vid % COLS
    b = (col // NDB).to(tl.int64)
    cols = (col % NDB) * BLOCK_D + tl.arange(0, BLOCK_D)
    return k, b, cols, cols < D


@triton.jit
def lookback_fwd_kernel(A, X, H, H0, DOC, FINAL, CARRY, TICKET, T, D, NK, NB, NDB,
                        HAS_H0: tl.constexpr, HAS_DOC: tl.constexpr,
                        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    k, b, cols, cmask = _tile(TICKET, D, NB * NDB, NDB, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_T)
    rows = k * BLOCK_T + offs_t
    m = (rows[:, None] < T) & cmask[None, :]
    ptr = b * T * D + rows[:, None] * D + cols[None, :]
    a = tl.load(A + ptr, mask=m, other=1.0).to(tl.float32)
    x = tl.load(X + ptr, mask=m, other=0.0).to(tl.float32)
    if HAS_DOC:
        d_cur = tl.load(DOC + b * T + rows, mask=rows < T, other=0)
        d_prev = tl.load(DOC + b * T + rows - 1, mask=(rows > 0) & (rows < T), other=0)
        a = tl.where(((rows > 0) & (rows < T) & (d_cur != d_prev))[:, None], 0.0, a)
    acc_a, acc_x = tl.associative_scan((a, x), 0, _combine)
    carry = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_H0:
        carry = tl.load(H0 + b * D + cols, mask=cmask, other=0.0).to(tl.float32)
    if k > 0:
        carry = _wait_carry(CARRY, ((k - 1) * NB + b) * D + cols, cmask)
    h = acc_x + acc_a * carry[None, :]
    last = tl.sum(tl.where(offs_t[:, None] == BLOCK_T - 1, h, 0.0), 0)   # padded rows keep the state
    if k < NK - 1:
        _publish_carry(CARRY, (k * NB + b) * D + cols, cmask, last)
    else:
        tl.store(FINAL + b * D + cols, last, mask=cmask)
    tl.store(H + ptr, h.to(H.dtype.element_ty), mask=m)


@triton.jit
def lookback_bwd_kernel(A, H, H0, DOC, DH, DFINAL, DA, DX, DH0, CARRY, TICKET, T, D, NK, NB, NDB,
                        HAS_H0: tl.constexpr, HAS_DOC: tl.constexpr, HAS_DFINAL: tl.constexpr,
                        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    kk, b, cols, cmask = _tile(TICKET, D, NB * NDB, NDB, BLOCK_D)    # kk-th tile from the end
    offs_t = tl.arange(0, BLOCK_T)
    pos = T - 1 - kk * BLOCK_T - offs_t                               # tile in reversed time order
    valid = pos >= 0
    m = valid[:, None] & cmask[None, :]
    base = b * T * D
    ptr = base + pos[:, None] * D + cols[None, :]
    nxt = pos + 1                                                     # a'_{t+1}; a'_T = 1 carries dfinal in
    a_next = tl.load(A + ptr + D, mask=(valid & (nxt < T))[:, None] & cmask[None, :], other=1.0).to(tl.float32)
    if HAS_DOC:
        d_cur = tl.load(DOC + b * T + pos, mask=valid, other=0)
        d_next = tl.load(DOC + b * T + nxt, mask=valid & (nxt < T), other=0)
        a_next = tl.where((valid & (nxt < T) & (d_next != d_cur))[:, None], 0.0, a_next)
    dh = tl.load(DH + ptr, mask=m, other=0.0).to(tl.float32)
    acc_a, acc_g = tl.associative_scan((a_next, dh), 0, _combine)
    carry = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_DFINAL:
        carry = tl.load(DFINAL + b * D + cols, mask=cmask, other=0.0).to(tl.float32)
    if kk > 0:
        carry = _wait_carry(CARRY, ((kk - 1) * NB + b) * D + cols, cmask)
    g = acc_g + acc_a * carry[None, :]
    last = tl.sum(tl.where(offs_t[:, None] == BLOCK_T - 1, g, 0.0), 0)   # g at the tile's first token
    if kk < NK - 1:
        _publish_carry(CARRY, (kk * NB + b) * D + cols, cmask, last)
    elif HAS_H0:
        a0 = tl.load(A + base + cols, mask=cmask, other=0.0).to(tl.float32)
        tl.store(DH0 + b * D + cols, a0 * last, mask=cmask)
    h_prev = tl.load(H + ptr - D, mask=m & (pos[:, None] > 0), other=0.0).to(tl.float32)
    if HAS_H0:
        h0 = tl.load(H0 + b * D + cols, mask=cmask, other=0.0).to(tl.float32)
        h_prev = tl.where((pos == 0)[:, None], h0[None, :], h_prev)
    if HAS_DOC:
        d_prev = tl.load(DOC + b * T + pos - 1, mask=valid & (pos > 0), other=0)
        h_prev = tl.where((valid & (pos > 0) & (d_prev != d_cur))[:, None], 0.0, h_prev)
    tl.store(DX + ptr, g.to(DX.dtype.element_ty), mask=m)
    tl.store(DA + ptr, (g * h_prev).to(DA.dtype.element_ty), mask=m)


def lookback_tiles(d: int, default: tuple[int, int, int] = (32, 128, 4)) -> tuple[int, int, dict]:
    """(BLOCK_T, BLOCK_D, launch options): 32 tokens × up to 128 contiguous channels (256-byte rows
    in bf16), 4 warps per program on a GPU (`benchmarks/kernels.py --static`, offline sm_90: 125 and
    128 registers forward and backward, no spills, 4 programs per SM), until a GPU sweep picks.
    LONGWEAVE_SCAN_TILES='T,D,WARPS' overrides (for the benchmark's sweep); tiny tiles in the
    interpreter so tests cross many tiles."""
    if _interpreted():
        return 8, 16, {}
    spec = os.environ.get("LONGWEAVE_SCAN_TILES", "")
    if spec:
        bt, bd, warps = (int(v) for v in spec.split(","))
        return bt, bd, {"num_warps": warps}
    bt, bd, warps = default
    return bt, min(bd, triton.next_power_of_2(d)), {"num_warps": warps}


def _grid_buffers(bsz, t, d, device):
    bt, bd, opts = lookback_tiles(d)
    nk, ndb = triton.cdiv(t, bt), triton.cdiv(d, bd)
    carry = torch.full((max(nk - 1, 1), bsz, d), SENTINEL.value, dtype=torch.int32, device=device)
    ticket = torch.zeros(1, dtype=torch.int32, device=device)
    return dict(BLOCK_T=bt, BLOCK_D=bd, **opts), (nk * bsz * ndb,), carry, ticket, (nk, bsz, ndb)


class _LookbackScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, x, h0, doc):
        bsz, t, d = x.shape
        h = empty_output((bsz, t, d), dtype=x.dtype, device=x.device)
        final = empty_output((bsz, d), dtype=torch.float32, device=x.device)
        meta, grid, carry, ticket, sizes = _grid_buffers(bsz, t, d, x.device)
        lookback_fwd_kernel[grid](a, x, h, h0 if h0 is not None else final, doc if doc is not None else final, final,
                                  carry, ticket, t, d, *sizes, HAS_H0=h0 is not None, HAS_DOC=doc is not None, **meta)
        ctx.save_for_backward(a, h, h0, doc)
        return h, final

    @staticmethod
    def backward(ctx, dh, dfinal):
        a, h, h0, doc = ctx.saved_tensors
        bsz, t, d = h.shape
        dh, da, dx, dh0 = grad_buffers(dh, a, h, h0)
        meta, grid, carry, ticket, sizes = _grid_buffers(bsz, t, d, h.device)
        dummy = da
        lookback_bwd_kernel[grid](
            a, h, h0 if h0 is not None else dummy, doc if doc is not None else dummy, dh,
            dfinal.contiguous() if dfinal is not None else dummy, da, dx, dh0 if dh0 is not None else dummy,
            carry, ticket, t, d, *sizes, HAS_H0=h0 is not None, HAS_DOC=doc is not None,
            HAS_DFINAL=dfinal is not None, **meta)
        return da, dx, (dh0.to(h0.dtype) if dh0 is not None else None), None


def linear_scan_lookback(
    a: torch.Tensor,
    x: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    doc_ids: torch.Tensor | None = None,
    return_final_state: bool = False,
):
    """Same contract as linear_scan_reference; fp32 accumulation (float64 inputs run in fp32)."""
    return run_scan(_LookbackScan.apply, a, x, initial_state, doc_ids, return_final_state)
