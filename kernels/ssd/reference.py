"""Reference SSD (Mamba-2 state space duality): the plain sequential recurrence.

Layout (mamba-ssm's): x [b,t,h,p], dt [b,t,h] (already softplus'ed), A [h] (< 0),
B and C [b,t,g,n] with head i reading group i // (h // g), D [h], state [b,h,p,n].
    H_t = exp(dt_t·A)·H_{t-1} + dt_t · x_t ⊗ B_t,      y_t = C_t·H_t + D·x_t
At a document boundary (doc_ids[:, t] != doc_ids[:, t-1]) H_{t-1} is treated as 0;
initial_state is the state before token 0 and always seeds token 0. Optional, as in mamba-ssm
(kernels/ssd/gating.py, shared by every path): dt_bias and dt_softplus make Δ = softplus(dt +
dt_bias), and z gates the output, y ⊙ silu(z).
Slow (one step per token), obviously correct; every fast path is tested against it.
"""
from __future__ import annotations

import torch

from kernels.segments import compute_dtype, reset_mask
from kernels.ssd.gating import with_gating


@with_gating
def ssd_reference(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    doc_ids: torch.Tensor | None = None,
    return_final_state: bool = False,
):
    """y [b,t,h,p] in x.dtype (and the final state [b,h,p,n], float32/float64, when return_final_state)."""
    b, t, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    if h % g:
        raise ValueError(f"ssd: heads {h} must be a multiple of groups {g}")
    acc = compute_dtype(x.dtype)
    xf, dtf, Af = x.to(acc), dt.to(acc), A.to(acc)
    Bh = B.to(acc).repeat_interleave(h // g, dim=2)            # [b,t,h,n]
    Ch = C.to(acc).repeat_interleave(h // g, dim=2)
    state = (torch.zeros(b, h, p, n, dtype=acc, device=x.device) if initial_state is None
             else initial_state.to(acc))
    resets = reset_mask(doc_ids) if doc_ids is not None else None
    ys = []
    for i in range(t):
        if resets is not None:
            state = state * (~resets[:, i]).to(acc)[:, None, None, None]
        decay = torch.exp(dtf[:, i] * Af)                       # [b,h]
        inp = (dtf[:, i, :, None] * xf[:, i])[..., None] * Bh[:, i, :, None, :]
        state = decay[..., None, None] * state + inp
        y = torch.einsum("bhpn,bhn->bhp", state, Ch[:, i])
        if D is not None:
            y = y + D.to(acc)[:, None] * xf[:, i]
        ys.append(y)
    y = torch.stack(ys, dim=1).to(x.dtype)
    if return_final_state:
        return y, state
    return y
