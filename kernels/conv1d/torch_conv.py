"""Causal depthwise conv1d in PyTorch: F.conv1d when no document masking is needed, else a
sum of k shifted, masked products (k is small, 4 in Mamba-2 and Griffin, so this is k fused
elementwise passes, cheaper than materialising a per-token mask for F.conv1d)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.conv1d.reference import apply_activation, extended_inputs
from kernels.segments import compute_dtype


def causal_conv1d_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    doc_ids: torch.Tensor | None = None,
    left_context: torch.Tensor | None = None,
    left_doc_ids: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """Same contract as causal_conv1d_reference (kernels/conv1d/reference.py)."""
    b, t, c = x.shape
    k = weight.shape[1]
    acc = compute_dtype(x.dtype) if x.device.type == "cpu" else x.dtype
    xe, seg = extended_inputs(x.to(acc), k, doc_ids, left_context, left_doc_ids)
    w = weight.to(acc)
    if seg is None:
        y = F.conv1d(xe.transpose(1, 2), w.unsqueeze(1), None if bias is None else bias.to(acc), groups=c)
        y = y.transpose(1, 2)
    else:
        own = seg[:, k - 1:]
        y = torch.zeros_like(x, dtype=acc) if bias is None else bias.to(acc).expand(b, t, c)
        for i in range(k):
            same = (seg[:, i:i + t] == own).to(acc).unsqueeze(-1)
            y = y + w[:, i] * xe[:, i:i + t] * same
    return apply_activation(y, activation).to(x.dtype)
