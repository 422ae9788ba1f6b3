"""causal-conv1d (Tri Dao's CUDA kernel, optional GPU extra) behind our conv1d contract.

Used by the dispatcher when importable and the call fits what that kernel supports: CUDA,
kernel width 2..4, no left context (its initial_states cannot be combined with seq_idx, and it
has no per-tap document check for a carried-in context). Document resets map to its seq_idx
(our segment ids: equal id = same document, as kernels/segments.py defines). Our [b, t, c]
tensors are its channel-last layout, so no copy is made.
"""
from __future__ import annotations

import torch

from kernels.dispatch import has_module
from kernels.segments import segment_ids

AVAILABLE = has_module("causal_conv1d")


def supports(x: torch.Tensor, weight: torch.Tensor, left_context, activation) -> bool:
    return (AVAILABLE and x.is_cuda and left_context is None and 2 <= weight.shape[1] <= 4
            and activation in (None, "silu") and x.dtype in (torch.float16, torch.bfloat16, torch.float32))


def causal_conv1d_cuda(x, weight, bias=None, *, doc_ids=None, left_context=None, left_doc_ids=None,
                       activation=None):
    from causal_conv1d import causal_conv1d_fn

    if left_context is not None:
        raise ValueError("causal_conv1d_cuda takes no left_context; the dispatcher routes those calls elsewhere")
    seq_idx = segment_ids(doc_ids).to(torch.int32).contiguous() if doc_ids is not None else None
    xt = x.contiguous().transpose(1, 2)  # [b, c, t] view with stride 1 on c: channel-last
    y = causal_conv1d_fn(xt, weight.to(x.dtype), None if bias is None else bias.to(x.dtype),
                         seq_idx=seq_idx, activation=activation)
    return y.transpose(1, 2)
