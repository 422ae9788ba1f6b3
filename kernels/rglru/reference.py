"""Reference linear recurrence (the scan inside RG-LRU): h_t = a_t ⊙ h_{t−1} + x_t.

a, x [b,t,d]; initial_state [b,d] is the state before token 0 and always seeds token 0; at a
document boundary (doc_ids[:, t] != doc_ids[:, t−1]) h_{t−1} is treated as 0. Sequential,
obviously correct; the parallel scan is tested against it.
"""
from __future__ import annotations

import torch

from kernels.segments import compute_dtype, reset_mask


def linear_scan_reference(
    a: torch.Tensor,
    x: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    doc_ids: torch.Tensor | None = None,
    return_final_state: bool = False,
):
    """h [b,t,d] in x.dtype (and the final state [b,d], float32/float64, when return_final_state)."""
    b, t, d = x.shape
    acc = compute_dtype(x.dtype)
    af, xf = a.to(acc), x.to(acc)
    state = torch.zeros(b, d, dtype=acc, device=x.device) if initial_state is None else initial_state.to(acc)
    resets = reset_mask(doc_ids) if doc_ids is not None else None
    hs = []
    for i in range(t):
        if resets is not None:
            state = state * (~resets[:, i]).to(acc)[:, None]
        state = af[:, i] * state + xf[:, i]
        hs.append(state)
    h = torch.stack(hs, dim=1).to(x.dtype) if t else x.new_zeros(b, 0, d)
    return (h, state) if return_final_state else h
