"""Causal depthwise conv1d (Mamba-2's xBC conv, Griffin's temporal conv) with document resets
and a carried-in left context (state passing, sequence-parallel halo).

`causal_conv1d_reference`, `causal_conv1d_torch` and the dispatcher `causal_conv1d`; the
contract is in reference.py.
"""
from __future__ import annotations

import torch

from kernels.conv1d.fused import causal_conv1d_cuda
from kernels.conv1d.fused import supports as conv1d_cuda_supports
from kernels.conv1d.reference import causal_conv1d_reference
from kernels.conv1d.torch_conv import causal_conv1d_torch
from kernels.dispatch import has_module, kernel_mode

__all__ = ["causal_conv1d", "causal_conv1d_reference", "causal_conv1d_torch", "select_conv1d_path"]


def select_conv1d_path(x: torch.Tensor, weight: torch.Tensor | None = None, left_context=None,
                       activation: str | None = None) -> str:
    """Name of the path `causal_conv1d` takes: 'reference', 'causal_conv1d' (the CUDA package, when
    importable and the call fits it), 'triton' (ours: CUDA, or LONGWEAVE_KERNELS=triton) or 'torch'."""
    mode = kernel_mode()
    if mode == "reference":
        return "reference"
    if mode == "triton":
        return "triton"
    if mode == "auto" and weight is not None and conv1d_cuda_supports(x, weight, left_context, activation):
        return "causal_conv1d"
    if mode == "auto" and x.is_cuda and has_module("triton"):
        return "triton"
    return "torch"


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
    path = select_conv1d_path(x, weight, left_context, activation)
    if path == "reference":
        return causal_conv1d_reference(x, weight, bias, **kwargs)
    if path == "causal_conv1d":
        return causal_conv1d_cuda(x, weight, bias, **kwargs)
    if path == "triton":
        from kernels.conv1d.triton import causal_conv1d_triton  # lazy: TRITON_INTERPRET must be set first

        return causal_conv1d_triton(x, weight, bias, **kwargs)
    return causal_conv1d_torch(x, weight, bias, **kwargs)
