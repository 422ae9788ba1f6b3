"""mamba-ssm's optional extras of the SSD interface, for every one of our SSD paths:
dt_bias and softplus on the way in, z gating on the way out.

    Δ = softplus(dt + dt_bias) (dt_softplus) or dt + dt_bias,   y = (C·H + D·x) ⊙ silu(z)

They are elementwise ops around the scan, run here in PyTorch (autograd gives d dt_bias and
dz). Fusing them into our Triton kernels would not pay: dt is [b,t,h], P (64) times smaller than
x, and z's backward needs the un-gated output either way, so a fused forward would only trade a
read of y for a second write. The mamba-ssm path (kernels/ssd/mamba.py) passes them through
to its kernels, which take them natively.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from kernels.segments import compute_dtype


def effective_dt(dt: torch.Tensor, dt_bias: torch.Tensor | None, dt_softplus: bool) -> torch.Tensor:
    """Δ as the scan uses it, in the accumulation dtype (float32, or float64 for float64 input)."""
    if dt_bias is None and not dt_softplus:
        return dt
    out = dt.to(compute_dtype(dt.dtype))
    if dt_bias is not None:
        out = out + dt_bias.to(out.dtype)
    return F.softplus(out) if dt_softplus else out


def gate(y: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
    """y ⊙ silu(z), computed in the accumulation dtype, returned in y's dtype."""
    if z is None:
        return y
    acc = compute_dtype(y.dtype)
    return (y.to(acc) * F.silu(z.to(acc))).to(y.dtype)


def with_gating(path):
    """Give an SSD path (x, dt, A, B, C, *, ..., return_final_state, ...) the keyword arguments
    z, dt_bias and dt_softplus (defaults: none, none, False: the path unchanged)."""

    @functools.wraps(path)
    def run(x, dt, A, B, C, *, z=None, dt_bias=None, dt_softplus=False, return_final_state=False, **kwargs):
        if z is not None and z.shape != x.shape:
            raise ValueError(f"ssd: z must have x's shape {tuple(x.shape)}, got {tuple(z.shape)}")
        if dt_bias is not None and dt_bias.shape != A.shape:
            raise ValueError(f"ssd: dt_bias must have A's shape {tuple(A.shape)} (one per head), "
                             f"got {tuple(dt_bias.shape)}")
        out = path(x, effective_dt(dt, dt_bias, dt_softplus), A, B, C, return_final_state=return_final_state,
                   **kwargs)
        if z is None:
            return out
        if return_final_state:
            return gate(out[0], z), out[1]
        return gate(out, z)

    return run
