"""Gated RMSNorm (Mamba-2): RMSNorm(y ⊙ silu(z)) normalised within each of `groups` channel
groups. Grouping by ngroups keeps the norm local to a tensor-parallel shard (heads and groups
are split together), so TP needs no all-reduce for it."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GatedRMSNorm(nn.Module):
    def __init__(self, dim: int, groups: int = 1, eps: float = 1e-6):
        super().__init__()
        if dim % groups:
            raise ValueError(f"gated norm: width {dim} is not divisible by {groups} groups")
        self.group_size, self.eps = dim // groups, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dtype = y.dtype
        work = torch.float64 if dtype == torch.float64 else torch.float32
        g = y.to(work) * F.silu(z.to(work))
        gg = g.unflatten(-1, (-1, self.group_size))   # a TP shard holds whole groups
        gg = gg * torch.rsqrt(gg.pow(2).mean(-1, keepdim=True) + self.eps)
        return gg.flatten(-2).to(dtype) * self.weight
