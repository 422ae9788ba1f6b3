"""The whole RG-LRU recurrence from its gate pre-activations, as one op (Griffin, De et al. 2024):

    r = σ(ga), i = σ(gx), log a = −c·softplus(−Λ)·r, a = exp(log a),
    b = √(1 − a²) ⊙ i ⊙ u   (tokens flagged `unscaled`: i ⊙ u),   h_t = a_t ⊙ h_{t−1} + b_t

u, ga, gx [b,t,d] (the conv output and the two gate projections' outputs, before σ), Λ [d].
√ has its derivative capped at max_sqrt_grad (as models/griffin.py's RG-LRU does: it stays
finite as a → 1). Document resets and the initial state as in kernels/rglru/reference.py.
`rglru_gated_reference` composes the plain pieces (float64-exact, autograd); the fused Triton
kernel (kernels/rglru/triton_gated.py) reads u, ga, gx once and writes only h, where the unfused
path writes a and b and reads them back (forward: 4 tensor passes instead of 8).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.rglru.reference import linear_scan_reference
from kernels.segments import compute_dtype


class _BoundedSqrt(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v, max_grad):
        ctx.save_for_backward(v)
        ctx.max_grad = max_grad
        return torch.sqrt(v)

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        return grad / torch.sqrt(v).clamp(min=1.0 / (2 * ctx.max_grad)) / 2, None


def gated_coefficients(u, ga, gx, a_param, c: float, *, unscaled=None, max_sqrt_grad: float = 1000.0):
    """(a, b) of the recurrence, in the accumulation dtype."""
    acc = compute_dtype(u.dtype)
    r, i = torch.sigmoid(ga.to(acc)), torch.sigmoid(gx.to(acc))
    log_a = -c * F.softplus(-a_param.to(acc)) * r
    scale = _BoundedSqrt.apply(-torch.expm1(2 * log_a), max_sqrt_grad)
    if unscaled is not None:
        scale = torch.where(unscaled[..., None], torch.ones_like(scale), scale)
    return torch.exp(log_a), scale * (i * u.to(acc))


def rglru_gated_reference(u, ga, gx, a_param, c: float, *, initial_state=None, doc_ids=None, unscaled=None,
                          max_sqrt_grad: float = 1000.0, return_final_state: bool = False):
    """h [b,t,d] in u.dtype (and the final state [b,d] in the accumulation dtype)."""
    a, b = gated_coefficients(u, ga, gx, a_param, c, unscaled=unscaled, max_sqrt_grad=max_sqrt_grad)
    h, final = linear_scan_reference(a, b, initial_state=initial_state, doc_ids=doc_ids, return_final_state=True)
    h = h.to(u.dtype)
    return (h, final) if return_final_state else h
