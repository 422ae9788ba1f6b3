"""Causal depthwise conv1d (Mamba-2's xBC conv, Griffin's temporal conv) with document resets
and a carried-in left context (state passing, sequence-parallel halo).

`causal_conv1d_reference`, `causal_conv1d_torch` and the dispatcher `causal_conv1d`; the
contract is in reference.py.
"""
from __future__ import annotations

import torch

from kernels.conv1d.reference import causal_conv1d_reference
from kernels.conv1d.torch_conv import causal_conv1d_torch
from kernels.dispatch import kernel_mode

__all__ = ["causal_conv1d", "causal_conv1d_reference", "causal_conv1d_torch", "select_conv1d_path"]


def select_conv1d_path(x: torch.Tensor) -> str:
    """Name of the path `causal_conv1d` takes for x: 'reference' or 'torch'."""
    return "reference" if kernel_mode() == "reference" else "torch"


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    doc_ids: torch.Tensor | None = None,
    left_context: torch.Tensor | None = None,
    left_doc_ids: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """y [b,t,c] for x [b,t,c], weight [c,k]; the fastest available path."""
    kwargs = dict(doc_ids=doc_ids, left_context=left_context, left_doc_ids=left_doc_ids, activation=activation)
    if select_conv1d_path(x) == "reference":
        return causal_conv1d_reference(x, weight, bias, **kwargs)
    return causal_conv1d_torch(x, weight, bias, **kwargs)
