"""Reference causal depthwise conv1d with document resets and a carried-in left context.

x [b,t,c], weight [c,k] (mamba's causal-conv1d layout): y_t = Σ_i weight[:, i] · x_{t−(k−1)+i}
(+ bias, then the activation). left_context [b,k−1,c] holds the k−1 inputs just before x
(state passing, the sequence-parallel halo); without it they are 0. A tap reading a position
in another document reads 0. left_context belongs to the document of token 0 unless
left_doc_ids [b,k−1] says otherwise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.segments import compute_dtype, segment_ids


def extended_inputs(x, k, doc_ids, left_context, left_doc_ids):
    """x with its k−1 left inputs prepended [b,t+k−1,c], and segment ids of that span (or None)."""
    b, _, c = x.shape
    left = x.new_zeros(b, k - 1, c) if left_context is None else left_context.to(x.dtype)
    xe = torch.cat([left, x], dim=1)
    if doc_ids is None:
        return xe, None
    ldoc = doc_ids[:, :1].expand(b, k - 1) if left_doc_ids is None else left_doc_ids.to(doc_ids.dtype)
    return xe, segment_ids(torch.cat([ldoc, doc_ids], dim=1))


def apply_activation(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return y
    if activation == "silu":
        return F.silu(y)
    raise ValueError(f"causal_conv1d: activation {activation!r} must be None or 'silu'")


def causal_conv1d_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    doc_ids: torch.Tensor | None = None,
    left_context: torch.Tensor | None = None,
    left_doc_ids: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """y [b,t,c]: one output per token, one tap at a time."""
    b, t, c = x.shape
    k = weight.shape[1]
    acc = compute_dtype(x.dtype)
    xe, seg = extended_inputs(x.to(acc), k, doc_ids, left_context, left_doc_ids)
    w = weight.to(acc)
    outs = []
    for pos in range(t):
        y = torch.zeros(b, c, dtype=acc, device=x.device) if bias is None else bias.to(acc).expand(b, c)
        for i in range(k):
            src = pos + i                                        # index into xe of x_{pos−(k−1)+i}
            tap = w[:, i] * xe[:, src]
            if seg is not None:
                tap = tap * (seg[:, src] == seg[:, pos + k - 1]).to(acc)[:, None]
            y = y + tap
        outs.append(y)
    y = torch.stack(outs, dim=1) if t else x.new_zeros(b, 0, c, dtype=acc)
    return apply_activation(y, activation).to(x.dtype)
