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


# Candidate kernel variants kept side by side until a GPU timing picks one (benchmarks/kernels.py).
SSD_BWD_VARIANTS = ("fused", "split")
SCAN_VARIANTS = ("tiled", "lookback")


def _variant(env: str, choices: tuple[str, ...], requested: str | None) -> str:
    name = (requested or os.environ.get(env, "") or choices[0]).strip().lower()
    if name not in choices:
        raise ValueError(f"{env}={name!r} is not one of {', '.join(choices)}")
    return name


def ssd_bwd_variant(requested: str | None = None) -> str:
    """Which Triton SSD backward runs: `requested`, else LONGWEAVE_SSD_BWD, else 'fused'
    (kernels/ssd/triton_bwd.py); 'split' is kernels/ssd/triton_bwd_split.py."""
    return _variant("LONGWEAVE_SSD_BWD", SSD_BWD_VARIANTS, requested)


def scan_variant(requested: str | None = None) -> str:
    """Which Triton linear scan runs: `requested`, else LONGWEAVE_SCAN, else 'tiled'
    (kernels/rglru/triton.py); 'lookback' is kernels/rglru/triton_lookback.py."""
    return _variant("LONGWEAVE_SCAN", SCAN_VARIANTS, requested)
