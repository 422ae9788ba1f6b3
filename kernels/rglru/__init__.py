"""Linear recurrence h_t = a_t ⊙ h_{t−1} + x_t (the scan inside Griffin's RG-LRU).

`linear_scan_reference` (sequential), `linear_scan_torch` (parallel chunked scan) and the
dispatcher `linear_scan`. Shapes, resets and states: see reference.py. Final states come back
in the accumulation dtype (float32, or float64 for float64 inputs).
"""
from __future__ import annotations

import torch

from kernels.dispatch import has_module, kernel_mode, scan_variant
from kernels.rglru.reference import linear_scan_reference
from kernels.rglru.scan import linear_scan_torch

__all__ = ["linear_scan", "linear_scan_reference", "linear_scan_torch", "select_scan_path"]


def select_scan_path(x: torch.Tensor) -> str:
    """Name of the path `linear_scan` takes for x: 'reference', 'torch' or 'triton' (fused, one
    pass over memory: CUDA with Triton installed, or forced by LONGWEAVE_KERNELS=triton). Which
    Triton kernel: LONGWEAVE_SCAN=tiled (default) or lookback (kernels/dispatch.py:scan_variant)."""
    mode = kernel_mode()
    if mode == "reference":
        return "reference"
    if mode == "triton" or (mode == "auto" and x.is_cuda and has_module("triton")):
        return "triton"
    return "torch"


def linear_scan(
    a: torch.Tensor,
    x: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    doc_ids: torch.Tensor | None = None,
    return_final_state: bool = False,
):
    """h [b,t,d] (and the final state [b,d]); the fastest available path."""
    kwargs = dict(initial_state=initial_state, doc_ids=doc_ids, return_final_state=return_final_state)
    path = select_scan_path(x)
    if path == "reference":
        return linear_scan_reference(a, x, **kwargs)
    if path == "triton" and scan_variant() == "lookback":
        from kernels.rglru.triton_lookback import linear_scan_lookback  # lazy, as below

        return linear_scan_lookback(a, x, **kwargs)
    if path == "triton":
        from kernels.rglru.triton import linear_scan_triton  # lazy: TRITON_INTERPRET must be set first

        return linear_scan_triton(a, x, **kwargs)
    return linear_scan_torch(a, x, **kwargs)
