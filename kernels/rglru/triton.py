"""Fused Triton linear scan h_t = a_t ⊙ h_{t-1} + x_t, forward and backward (RG-LRU's recurrence).

Why fused: the scan is memory-bound; the torch path makes log2(L) passes over [b, t, d], these
kernels make one (read a and x, write h; backward reads a, h, dh and writes da, dx). Each
program owns BLOCK_D channels of one row and walks time in tiles of BLOCK_T tokens: inside a
tile `tl.associative_scan` with the combine (a1, x1)∘(a2, x2) = (a1·a2, a2·x1 + x2) gives every
token its in-tile prefix, and the tile's last state is carried into the next tile.
Document resets set a_t = 0 where doc_ids changes (never at token 0: initial_state always seeds
token 0, as in kernels/rglru/reference.py). Backward runs the same scan backwards in time on
g_t = dh_t + a'_{t+1}·g_{t+1} (tiles loaded in reversed order), then da_t = g_t·h_{t-1}·[no reset],
dx_t = g_t, dh0 = a_0·g_0. Triton is imported lazily by the dispatcher (TRITON_INTERPRET).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels.dispatch import empty_output


@triton.jit
def _combine(a1, x1, a2, x2):
    return a1 * a2, a2 * x1 + x2


@triton.jit
def scan_fwd_kernel(A, X, H, H0, DOC, FINAL, T, D, HAS_H0: tl.constexpr, HAS_DOC: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    offs_t = tl.arange(0, BLOCK_T)
    base = b * T * D
    carry = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_H0:
        carry = tl.load(H0 + b * D + cols, mask=cmask, other=0.0).to(tl.float32)
    for t0 in range(0, T, BLOCK_T):
        rows = t0 + offs_t
        m = (rows[:, None] < T) & cmask[None, :]
        ptr = base + rows[:, None] * D + cols[None, :]
        a = tl.load(A + ptr, mask=m, other=1.0).to(tl.float32)
        x = tl.load(X + ptr, mask=m, other=0.0).to(tl.float32)
        if HAS_DOC:
            d_cur = tl.load(DOC + b * T + rows, mask=rows < T, other=0)
            d_prev = tl.load(DOC + b * T + rows - 1, mask=(rows > 0) & (rows < T), other=0)
            reset = (rows > 0) & (rows < T) & (d_cur != d_prev)
            a = tl.where(reset[:, None], 0.0, a)
        acc_a, acc_x = tl.associative_scan((a, x), 0, _combine)
        h = acc_x + acc_a * carry[None, :]
        tl.store(H + ptr, h.to(H.dtype.element_ty), mask=m)
        carry = tl.sum(tl.where(offs_t[:, None] == BLOCK_T - 1, h, 0.0), 0)
    tl.store(FINAL + b * D + cols, carry, mask=cmask)


@triton.jit
def scan_bwd_kernel(A, H, H0, DOC, DH, DFINAL, DA, DX, DH0, T, D, HAS_H0: tl.constexpr,
                    HAS_DOC: tl.constexpr, HAS_DFINAL: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    offs_t = tl.arange(0, BLOCK_T)
    base = b * T * D
    carry = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_DFINAL:
        carry = tl.load(DFINAL + b * D + cols, mask=cmask, other=0.0).to(tl.float32)
    h0 = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_H0:
        h0 = tl.load(H0 + b * D + cols, mask=cmask, other=0.0).to(tl.float32)
    for t0 in range(0, T, BLOCK_T):
        pos = T - 1 - t0 - offs_t                       # tile in reversed time order
        valid = pos >= 0
        m = valid[:, None] & cmask[None, :]
        ptr = base + pos[:, None] * D + cols[None, :]
        nxt = pos + 1                                   # a'_{t+1}; a'_T = 1 carries dfinal in
        mn = (valid & (nxt < T))[:, None] & cmask[None, :]
        a_next = tl.load(A + ptr + D, mask=mn, other=1.0).to(tl.float32)
        if HAS_DOC:
            d_cur = tl.load(DOC + b * T + pos, mask=valid, other=0)
            d_next = tl.load(DOC + b * T + nxt, mask=valid & (nxt < T), other=0)
            a_next = tl.where((valid & (nxt < T) & (d_next != d_cur))[:, None], 0.0, a_next)
        dh = tl.load(DH + ptr, mask=m, other=0.0).to(tl.float32)
        acc_a, acc_g = tl.associative_scan((a_next, dh), 0, _combine)
        g = acc_g + acc_a * carry[None, :]
        h_prev = tl.load(H + ptr - D, mask=m & (pos[:, None] > 0), other=0.0).to(tl.float32)
        h_prev = tl.where((pos == 0)[:, None], h0[None, :], h_prev)
        if HAS_DOC:
            d_prev = tl.load(DOC + b * T + pos - 1, mask=valid & (pos > 0), other=0)
            h_prev = tl.where((valid & (pos > 0) & (d_prev != d_cur))[:, None], 0.0, h_prev)
        tl.store(DX + ptr, g.to(DX.dtype.element_ty), mask=m)
        tl.store(DA + ptr, (g * h_prev).to(DA.dtype.element_ty), mask=m)
        carry = tl.sum(tl.where(offs_t[:, None] == BLOCK_T - 1, g, 0.0), 0)
    if HAS_H0:
        a0 = tl.load(A + base + cols, mask=cmask, other=0.0).to(tl.float32)
        tl.store(DH0 + b * D + cols, a0 * carry, mask=cmask)


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _blocks(b: int, d: int) -> tuple[int, int, dict]:
    """(BLOCK_T, BLOCK_D, launch options). Programs = b · d / BLOCK_D walk time sequentially, so
    BLOCK_D shrinks until there are a few programs per SM (one per SM measured 25-37% of copy
    bandwidth on an H100 at b=4..8, d=2560); 64 tokens per tile keep enough bytes in flight."""
    if _interpreted():
        return 8, 16, {}
    bd = min(128, triton.next_power_of_2(d))
    while bd > 16 and b * triton.cdiv(d, bd) < 4 * 132:
        bd //= 2
    return 64, bd, {"num_warps": 4}


def grad_buffers(dh, a, h, h0):
    """What every Triton scan backward starts from: dh (zeros when only the final state has a
    gradient) and unwritten da, dx and dh0 (None without an initial state) for its kernel to fill."""
    bsz, t, d = h.shape
    dh = torch.zeros_like(h) if dh is None else dh.contiguous()
    da = empty_output((bsz, t, d), dtype=a.dtype, device=a.device)
    dx = empty_output((bsz, t, d), dtype=h.dtype, device=h.device)
    dh0 = empty_output((bsz, d), dtype=torch.float32, device=h.device) if h0 is not None else None
    return dh, da, dx, dh0


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, x, h0, doc):
        bsz, t, d = x.shape
        h = empty_output((bsz, t, d), dtype=x.dtype, device=x.device)
        final = empty_output((bsz, d), dtype=torch.float32, device=x.device)
        bt, bd, opts = _blocks(bsz, d)
        scan_fwd_kernel[(bsz, triton.cdiv(d, bd))](
            a, x, h, h0 if h0 is not None else final, doc if doc is not None else final, final, t, d,
            HAS_H0=h0 is not None, HAS_DOC=doc is not None, BLOCK_T=bt, BLOCK_D=bd, **opts)
        ctx.save_for_backward(a, h, h0, doc)
        return h, final

    @staticmethod
    def backward(ctx, dh, dfinal):
        a, h, h0, doc = ctx.saved_tensors
        bsz, t, d = h.shape
        dh, da, dx, dh0 = grad_buffers(dh, a, h, h0)
        bt, bd, opts = _blocks(bsz, d)
        dummy = da
        scan_bwd_kernel[(bsz, triton.cdiv(d, bd))](
            a, h, h0 if h0 is not None else dummy, doc if doc is not None else dummy, dh,
            dfinal.contiguous() if dfinal is not None else dummy, da, dx, dh0 if dh0 is not None else dummy,
            t, d, HAS_H0=h0 is not None, HAS_DOC=doc is not None, HAS_DFINAL=dfinal is not None,
            BLOCK_T=bt, BLOCK_D=bd, **opts)
        return da, dx, (dh0.to(h0.dtype) if dh0 is not None else None), None


def run_scan(scan_fn, a, x, initial_state, doc_ids, return_final_state: bool):
    """The entry every Triton scan variant shares: fp32 accumulation (float64 inputs run in fp32 and
    come back float64), contiguous inputs, int32 document ids, an empty sequence answered without a
    launch; `scan_fn(a, x, h0, doc)` is the variant's autograd function's apply."""
    if x.device.type == "cpu" and not _interpreted():
        raise RuntimeError("the Triton linear scan on CPU needs TRITON_INTERPRET=1 (or run on a CUDA device)")
    in_dtype = x.dtype
    if in_dtype == torch.float64:
        a, x = a.float(), x.float()
        initial_state = initial_state.float() if initial_state is not None else None
    a, x = a.contiguous(), x.contiguous()
    h0 = initial_state.contiguous() if initial_state is not None else None
    doc = doc_ids.to(torch.int32).contiguous() if doc_ids is not None else None
    if x.shape[1] == 0:
        h = x
        final = h0.float() if h0 is not None else x.new_zeros(x.shape[0], x.shape[2], dtype=torch.float32)
    else:
        h, final = scan_fn(a, x, h0, doc)
    if in_dtype == torch.float64:
        h, final = h.double(), final.double()
    return (h, final) if return_final_state else h


def linear_scan_triton(
    a: torch.Tensor,
    x: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    doc_ids: torch.Tensor | None = None,
    return_final_state: bool = False,
):
    """Same contract as linear_scan_reference; fp32 accumulation (float64 inputs run in fp32)."""
    return run_scan(_TritonScan.apply, a, x, initial_state, doc_ids, return_final_state)
