"""Which implementation of an op runs: forced by LONGWEAVE_KERNELS, else the fastest available.

Modes: `reference` (plain, slow, obviously correct), `torch` (PyTorch paths that run
everywhere), `triton` (our fused kernels), `auto` (default: best available for the inputs).
"""
from __future__ import annotations

import importlib.util
import os

MODES = ("auto", "reference", "torch", "triton")
_configured = "auto"     # the run's train.kernels (use_kernels); the environment variable wins over it


def use_kernels(mode: str) -> str:
    """Set this process's kernel mode (the trainer passes train.kernels); returns the previous one."""
    global _configured
    if mode not in MODES:
        raise ValueError(f"kernel mode {mode!r} is not one of {', '.join(MODES)}")
    previous, _configured = _configured, mode
    return previous


def kernel_mode() -> str:
    mode = os.environ.get("LONGWEAVE_KERNELS", "").strip().lower() or _configured
    if mode not in MODES:
        raise ValueError(f"LONGWEAVE_KERNELS={mode!r} is not one of {', '.join(MODES)}")
    return mode


def has_module(name: str) -> bool:
    """True when `name` is importable (optional GPU extras: flash_attn, mamba_ssm, causal_conv1d)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


# Tests set this to True so fused kernels allocate their outputs filled with NaN (poisoned):
# an element a kernel forgets to write then fails the comparison instead of passing on luck.
POISON_OUTPUTS = False


def empty_output(shape, *, dtype, device, like=None):
    """torch.empty for kernel outputs, or a NaN-filled tensor while POISON_OUTPUTS is set."""
    import torch

    if like is not None:
        shape, dtype, device = like.shape, like.dtype, like.device
    if POISON_OUTPUTS:
        fill = float("nan") if dtype.is_floating_point else -(2**30)
        return torch.full(shape, fill, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)
