"""Which implementation of an op runs: forced by LONGWEAVE_KERNELS, else the fastest available.

Modes: `reference` (plain, slow, obviously correct), `torch` (PyTorch paths that run
everywhere), `triton` (our fused kernels), `auto` (default: best available for the inputs).
"""
from __future__ import annotations

import importlib.util
import os

MODES = ("auto", "reference", "torch", "triton")


def kernel_mode() -> str:
    mode = os.environ.get("LONGWEAVE_KERNELS", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"LONGWEAVE_KERNELS={mode!r} is not one of {', '.join(MODES)}")
    return mode


def has_module(name: str) -> bool:
    """True when `name` is importable (optional GPU extras: flash_attn, mamba_ssm, causal_conv1d)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
