"""Halo exchange: the last L tokens before this rank's chunk, from the previous rank(s).

Causal conv1d needs the k−1 inputs before its first token; sliding-window attention needs the
last window−1 keys/values. When L exceeds the chunk length n the halo spans several previous
ranks; the first ranks get fewer than L tokens (min(L, r·n)). Differentiable: the backward
sends each halo token's gradient back to the rank that owns the token.
"""
from __future__ import annotations

import torch

from parallel.sequence.p2p import SPGroup


def _span(src: int, dst: int, n: int, length: int) -> tuple[int, int] | None:
    """Local [start, stop) of rank src's chunk that falls in rank dst's halo, or None."""
    lo = max(src * n, dst * n - length)
    hi = min((src + 1) * n, dst * n)
    return (lo - src * n, hi - src * n) if lo < hi else None


def halo_forward(g: SPGroup, x: torch.Tensor, length: int) -> torch.Tensor:
    """[B, min(length, r·n), ...]: the tokens just before this rank's chunk x [B, n, ...]."""
    n, r = x.shape[1], g.rank
    sends, recvs = [], []
    for dst in range(r + 1, g.world):
        sp = _span(r, dst, n, length)
        if sp is not None:
            sends.append((dst, x[:, sp[0]:sp[1]]))
    for src in range(r):
        sp = _span(src, r, n, length)
        if sp is not None:
            shape = (x.shape[0], sp[1] - sp[0], *x.shape[2:])
            recvs.append((src, src, torch.empty(shape, dtype=x.dtype, device=x.device)))
    got = g.exchange(sends, recvs).wait()
    parts = [got[s] for s in sorted(got)]
    return torch.cat(parts, dim=1) if parts else x[:, :0]


def halo_backward(g: SPGroup, x_shape: torch.Size, length: int, grad_halo: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. this rank's x: its own halo gradients go home, later ranks' come in."""
    n, r = x_shape[1], g.rank
    sends, recvs = [], []
    pos = 0
    for src in range(r):
        sp = _span(src, r, n, length)
        if sp is not None:
            size = sp[1] - sp[0]
            sends.append((src, grad_halo[:, pos:pos + size]))
            pos += size
    for dst in range(r + 1, g.world):
        sp = _span(r, dst, n, length)
        if sp is not None:
            shape = (x_shape[0], sp[1] - sp[0], *x_shape[2:])
            recvs.append((dst, sp, torch.empty(shape, dtype=grad_halo.dtype, device=grad_halo.device)))
    got = g.exchange(sends, recvs).wait()
    grad_x = grad_halo.new_zeros(x_shape)
    for sp, part in got.items():
        grad_x[:, sp[0]:sp[1]] += part
    return grad_x


class HaloFunction(torch.autograd.Function):
    """halo = Halo(x); with `cached` (rematerialization) the forward exchange is skipped."""

    @staticmethod
    def forward(ctx, x, g: SPGroup, length: int, cached, record):
        ctx.g, ctx.length, ctx.x_shape, ctx.record = g, length, x.shape, record
        before = g.bytes_sent
        out = halo_forward(g, x, length) if cached is None else cached.clone()
        if record is not None:
            record.fwd_bytes += g.bytes_sent - before
        return out

    @staticmethod
    def backward(ctx, grad):
        before = ctx.g.bytes_sent
        gx = halo_backward(ctx.g, ctx.x_shape, ctx.length, grad.contiguous())
        if ctx.record is not None:
            ctx.record.bwd_bytes += ctx.g.bytes_sent - before
        return gx, None, None, None, None
