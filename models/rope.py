"""Rotary position embedding driven by per-token positions (Batch.positions).

Positions restart at 0 in every packed document, so a document's encoding never depends on
what was packed before it. Rotation uses the split-half (GPT-NeoX) convention.
"""
from __future__ import annotations

import torch


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin of shape [B, T, 1, head_dim // 2] for int positions [B, T]."""
    work = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=work) / head_dim)
    ang = positions.to(work).unsqueeze(-1) * inv_freq
    return ang.cos().unsqueeze(2), ang.sin().unsqueeze(2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, T, H, D] by the angles from rope_angles."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].to(cos.dtype), x[..., half:].to(cos.dtype)
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return out.to(x.dtype)
