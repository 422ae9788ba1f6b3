"""SSD (Mamba-2) scan: reference recurrence, chunked PyTorch path, and the dispatcher `ssd`.

Paths: `reference` (sequential), `torch` (chunked, runs everywhere), `triton` (ours, fused,
kernels/ssd/triton.py) and `mamba_ssm` (mamba-ssm's fused kernels, kernels/ssd/mamba.py), which
auto mode takes on CUDA for long inputs when it is installed, where it was measured faster.

Contract (binding for the Triton and sequence-parallel code): see reference.py for shapes,
the recurrence, document resets and initial/final states. Final states are returned in the
accumulation dtype (float32, or float64 for float64 inputs) so state passing loses nothing.
"""
from __future__ import annotations

import torch

from kernels.dispatch import has_module, kernel_mode
from kernels.ssd.chunked import ssd_chunked
from kernels.ssd.mamba import load_chunk_scan, mamba_pays_off, mamba_supports, ssd_mamba
from kernels.ssd.reference import ssd_reference

__all__ = ["ssd", "ssd_reference", "ssd_chunked", "select_ssd_path"]


def select_ssd_path(x: torch.Tensor, chunk_size: int = 64) -> str:
    """Name of the path `ssd` takes for x: 'reference', 'torch', 'triton' (our fused chunk scan:
    CUDA with Triton installed, or LONGWEAVE_KERNELS=triton) or 'mamba_ssm' (auto mode, CUDA,
    mamba-ssm importable and b·t·h at least MAMBA_MIN_TOKEN_HEADS)."""
    mode = kernel_mode()
    if mode == "reference":
        return "reference"
    if mode == "auto" and mamba_supports(x) and mamba_pays_off(x) and load_chunk_scan() is not None:
        return "mamba_ssm"
    if mode == "triton" or (mode == "auto" and x.is_cuda and has_module("triton")):
        return "triton"
    return "torch"


def ssd(
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
    chunk_size: int = 64,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
):
    """y [b,t,h,p] (and the final state [b,h,p,n]); the fastest available path. z, dt_bias and
    dt_softplus are mamba-ssm's optional gating and Δ = softplus(dt + dt_bias) (gating.py)."""
    kwargs = dict(D=D, initial_state=initial_state, doc_ids=doc_ids, return_final_state=return_final_state,
                  z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)
    path = select_ssd_path(x, chunk_size)
    if path == "reference":
        return ssd_reference(x, dt, A, B, C, **kwargs)
    if path == "mamba_ssm":
        return ssd_mamba(x, dt, A, B, C, **kwargs)
    if path == "triton":
        from kernels.ssd.triton import ssd_triton  # lazy: TRITON_INTERPRET must be set first

        return ssd_triton(x, dt, A, B, C, chunk_size=chunk_size, **kwargs)
    return ssd_chunked(x, dt, A, B, C, chunk_size=chunk_size, **kwargs)
