"""Fused Triton RG-LRU from the gate pre-activations (math in kernels/rglru/gated.py): each program
reads one [BLOCK_T, BLOCK_D] tile of u, ga, gx, computes a and b in registers, scans, and writes
h; the carries between time tiles are chained as in kernels/rglru/triton_lookback.py.

Forward bytes: u, ga, gx read, h written (the unfused path also writes a, b and reads them back).
Backward recomputes a, b from the same three tiles (a_{t+1} from ga one row down), runs the
reverse scan g_t = dh_t + a_{t+1}·g_{t+1}, and applies the chain rule in registers:
  da = g·h_{t−1}, db = g;  du = db·s·i, di = db·s·u, ds = db·i·u (0 for unscaled tokens),
  dlog a = da·a − 2a²·ds / (2·max(s, 1/(2·max_sqrt_grad))),  dga = dlog a·k·r(1−r), dgx = di·i(1−i)
with s = √(1 − a²), k = −c·softplus(−Λ) per channel (computed in torch, so autograd takes dΛ
from dk = Σ dlog a·r, summed from per-tile partials).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.dispatch import empty_output
from kernels.rglru.triton import _combine
from kernels.rglru.triton_lookback import (
    SENTINEL,
    _interpreted,
    _publish_carry,
    _tile,
    _wait_carry,
    lookback_tiles,
)


@triton.jit
def _expm1(x):
    """exp(x) − 1 without cancellation near 0 (Taylor to x⁴ where |x| < 0.05)."""
    small = x * (1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + x * 0.25)))
    return tl.where(tl.abs(x) < 0.05, small, tl.exp(x) - 1.0)


@triton.jit
def _coefficients(U, GA, GX, UNSC, k, ptr, m, rows, b, T, HAS_UNSCALED: tl.constexpr):
    """u, r, i, a, s (the √ scale) and b of a tile; padded elements get a = 1, b = 0."""
    u = tl.load(U + ptr, mask=m, other=0.0).to(tl.float32)
    r = tl.sigmoid(tl.load(GA + ptr, mask=m, other=0.0).to(tl.float32))
    i = tl.sigmoid(tl.load(GX + ptr, mask=m, other=0.0).to(tl.float32))
    log_a = k[None, :] * r
    a = tl.where(m, tl.exp(log_a), 1.0)
    s = tl.sqrt(-_expm1(2.0 * log_a))
    if HAS_UNSCALED:
        flag = tl.load(UNSC + b * T + rows, mask=(rows >= 0) & (rows < T), other=0) != 0
        s = tl.where(flag[:, None], 1.0, s)
    return u, r, i, a, s, tl.where(m, s * i * u, 0.0)


@triton.jit
def gated_fwd_kernel(U, GA, GX, K, UNSC, H, H0, DOC, FINAL, CARRY, TICKET, T, D, NK, NB, NDB,
                     HAS_H0: tl.constexpr, HAS_DOC: tl.constexpr, HAS_UNSCALED: tl.constexpr,
                     BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    kt, b, cols, cmask = _tile(TICKET, D, NB * NDB, NDB, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_T)
    rows = kt * BLOCK_T + offs_t
    m = (rows[:, None] < T) & cmask[None, :]
    ptr = b * T * D + rows[:, None] * D + cols[None, :]
    k = tl.load(K + cols, mask=cmask, other=0.0)
    u, r, i, a, s, x = _coefficients(U, GA, GX, UNSC, k, ptr, m, rows, b, T, HAS_UNSCALED)
    if HAS_DOC:
        d_cur = tl.load(DOC + b * T + rows, mask=rows < T, other=0)
        d_prev = tl.load(DOC + b * T + rows - 1, mask=(rows > 0) & (rows < T), other=0)
        a = tl.where(((rows > 0) & (rows < T) & (d_cur != d_prev))[:, None], 0.0, a)
    acc_a, acc_x = tl.associative_scan((a, x), 0, _combine)
    carry = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_H0:
        carry = tl.load(H0 + b * D + cols, mask=cmask, other=0.0).to(tl.float32)
    if kt > 0:
        carry = _wait_carry(CARRY, ((kt - 1) * NB + b) * D + cols, cmask)
    h = acc_x + acc_a * carry[None, :]
    last = tl.sum(tl.where(offs_t[:, None] == BLOCK_T - 1, h, 0.0), 0)
    if kt < NK - 1:
        _publish_carry(CARRY, (kt * NB + b) * D + cols, cmask, last)
    else:
        tl.store(FINAL + b * D + cols, last, mask=cmask)
    tl.store(H + ptr, h.to(H.dtype.element_ty), mask=m)


@triton.jit
def gated_bwd_kernel(U, GA, GX, K, UNSC, H, H0, DOC, DH, DFINAL, DU, DGA, DGX, DK_PART, DH0, CARRY, TICKET,
                     T, D, NK, NB, NDB, max_sqrt_grad, HAS_H0: tl.constexpr, HAS_DOC: tl.constexpr,
                     HAS_UNSCALED: tl.constexpr, HAS_DFINAL: tl.constexpr,
                     BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    kk, b, cols, cmask = _tile(TICKET, D, NB * NDB, NDB, BLOCK_D)    # kk-th tile from the end
    offs_t = tl.arange(0, BLOCK_T)
    pos = T - 1 - kk * BLOCK_T - offs_t
    valid = pos >= 0
    m = valid[:, None] & cmask[None, :]
    base = b * T * D
    ptr = base + pos[:, None] * D + cols[None, :]
    k = tl.load(K + cols, mask=cmask, other=0.0)
    u, r, i, a, s, x = _coefficients(U, GA, GX, UNSC, k, ptr, m, pos, b, T, HAS_UNSCALED)
    nxt = pos + 1
    mn = (valid & (nxt < T))[:, None] & cmask[None, :]
    a_next = tl.where(mn, tl.exp(k[None, :] * tl.sigmoid(tl.load(GA + ptr + D, mask=mn, other=0.0).to(tl.float32))),
                      1.0)
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
    last = tl.sum(tl.where(offs_t[:, None] == BLOCK_T - 1, g, 0.0), 0)
    if kk < NK - 1:
        _publish_carry(CARRY, (kk * NB + b) * D + cols, cmask, last)
    elif HAS_H0:
        a0 = tl.exp(k * tl.sigmoid(tl.load(GA + base + cols, mask=cmask, other=0.0).to(tl.float32)))
        tl.store(DH0 + b * D + cols, a0 * last, mask=cmask)
    h_prev = tl.load(H + ptr - D, mask=m & (pos[:, None] > 0), other=0.0).to(tl.float32)
    if HAS_H0:
        h0 = tl.load(H0 + b * D + cols, mask=cmask, other=0.0).to(tl.float32)
        h_prev = tl.where((pos == 0)[:, None], h0[None, :], h_prev)
    if HAS_DOC:
        d_prev = tl.load(DOC + b * T + pos - 1, mask=valid & (pos > 0), other=0)
        h_prev = tl.where((valid & (pos > 0) & (d_prev != d_cur))[:, None], 0.0, h_prev)
    ds = g * i * u
    if HAS_UNSCALED:
        flag = tl.load(UNSC + b * T + pos, mask=valid, other=0) != 0
        ds = tl.where(flag[:, None], 0.0, ds)
    dlog_a = g * h_prev * a - a * a * ds / tl.maximum(s, 0.5 / max_sqrt_grad)
    dlog_a = tl.where(m, dlog_a, 0.0)
    di = g * s * u
    tl.store(DU + ptr, (g * s * i).to(DU.dtype.element_ty), mask=m)
    tl.store(DGA + ptr, (dlog_a * k[None, :] * r * (1.0 - r)).to(DGA.dtype.element_ty), mask=m)
    tl.store(DGX + ptr, (di * i * (1.0 - i)).to(DGX.dtype.element_ty), mask=m)
    tl.store(DK_PART + (kk * NB + b) * D + cols, tl.sum(dlog_a * r, 0), mask=cmask)


def _launch(bsz, t, d, device):
    # 16 tokens a tile: the backward holds more live tensors than the plain scan's; an offline sm_90
    # compile spilled at 32x128 (255 registers + 72 bytes) and not at 16x128 (168 registers)
    bt, bd, opts = lookback_tiles(d, default=(16, 128, 4))
    nk, ndb = triton.cdiv(t, bt), triton.cdiv(d, bd)
    carry = torch.full((max(nk - 1, 1), bsz, d), SENTINEL.value, dtype=torch.int32, device=device)
    ticket = torch.zeros(1, dtype=torch.int32, device=device)
    return (nk * bsz * ndb,), carry, ticket, (nk, bsz, ndb), dict(BLOCK_T=bt, BLOCK_D=bd, **opts)


class _GatedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, ga, gx, k, h0, doc, unscaled, max_sqrt_grad):
        bsz, t, d = u.shape
        h = empty_output((bsz, t, d), dtype=u.dtype, device=u.device)
        final = empty_output((bsz, d), dtype=torch.float32, device=u.device)
        grid, carry, ticket, sizes, meta = _launch(bsz, t, d, u.device)
        dummy = final
        gated_fwd_kernel[grid](u, ga, gx, k, unscaled if unscaled is not None else dummy, h,
                               h0 if h0 is not None else dummy, doc if doc is not None else dummy, final, carry,
                               ticket, t, d, *sizes, HAS_H0=h0 is not None, HAS_DOC=doc is not None,
                               HAS_UNSCALED=unscaled is not None, **meta)
        ctx.save_for_backward(u, ga, gx, k, h, h0, doc, unscaled)
        ctx.max_sqrt_grad = max_sqrt_grad
        return h, final

    @staticmethod
    def backward(ctx, dh, dfinal):
        u, ga, gx, k, h, h0, doc, unscaled = ctx.saved_tensors
        bsz, t, d = u.shape
        dh = torch.zeros_like(h) if dh is None else dh.contiguous()
        du, dga, dgx = (empty_output((bsz, t, d), dtype=v.dtype, device=v.device) for v in (u, ga, gx))
        dh0 = empty_output((bsz, d), dtype=torch.float32, device=u.device) if h0 is not None else None
        grid, carry, ticket, (nk, nb, ndb), meta = _launch(bsz, t, d, u.device)
        dk_part = empty_output((nk, bsz, d), dtype=torch.float32, device=u.device)
        dummy = dk_part
        gated_bwd_kernel[grid](
            u, ga, gx, k, unscaled if unscaled is not None else dummy, h, h0 if h0 is not None else dummy,
            doc if doc is not None else dummy, dh, dfinal.contiguous() if dfinal is not None else dummy, du, dga, dgx,
            dk_part, dh0 if dh0 is not None else dummy, carry, ticket, t, d, nk, nb, ndb, ctx.max_sqrt_grad,
            HAS_H0=h0 is not None, HAS_DOC=doc is not None, HAS_UNSCALED=unscaled is not None,
            HAS_DFINAL=dfinal is not None, **meta)
        return (du, dga, dgx, dk_part.sum((0, 1)), dh0.to(h0.dtype) if h0 is not None else None,
                None, None, None)


def rglru_gated_triton(u, ga, gx, a_param, c: float, *, initial_state=None, doc_ids=None, unscaled=None,
                       max_sqrt_grad: float = 1000.0, return_final_state: bool = False):
    """Same contract as kernels/rglru/gated.py:rglru_gated_reference; fp32 accumulation (float64
    inputs run in fp32)."""
    if u.device.type == "cpu" and not _interpreted():
        raise RuntimeError("the Triton RG-LRU on CPU needs TRITON_INTERPRET=1 (or run on a CUDA device)")
    if not (u.shape == ga.shape == gx.shape) or a_param.shape != u.shape[-1:]:
        raise ValueError(f"rglru: u, ga, gx must share one shape [b,t,d] and a_param be [d]; got {tuple(u.shape)}, "
                         f"{tuple(ga.shape)}, {tuple(gx.shape)}, {tuple(a_param.shape)}")
    in_dtype = u.dtype
    if in_dtype == torch.float64:
        u, ga, gx = u.float(), ga.float(), gx.float()
        initial_state = initial_state.float() if initial_state is not None else None
    k = (-c * torch.nn.functional.softplus(-a_param.float())).contiguous()
    h0 = initial_state.contiguous() if initial_state is not None else None
    doc = doc_ids.to(torch.int32).contiguous() if doc_ids is not None else None
    unsc = unscaled.to(torch.int32).contiguous() if unscaled is not None else None
    if u.shape[1] == 0:
        h = u
        final = h0.float() if h0 is not None else u.new_zeros(u.shape[0], u.shape[2], dtype=torch.float32)
    else:
        h, final = _GatedScan.apply(u.contiguous(), ga.contiguous(), gx.contiguous(), k, h0, doc, unsc, max_sqrt_grad)
    if in_dtype == torch.float64:
        h, final = h.double(), final.double()
    return (h, final) if return_final_state else h
