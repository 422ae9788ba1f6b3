"""Gated MLPs: SwiGLU (silu gate) and GeGLU (tanh-approximated gelu gate)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.config import ModelConfig


class GatedMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.mlp_hidden_size
        self.kind = cfg.mlp_type
        self.w_gate = nn.Linear(cfg.d_model, hidden, bias=cfg.mlp_bias)
        self.w_up = nn.Linear(cfg.d_model, hidden, bias=cfg.mlp_bias)
        self.w_down = nn.Linear(hidden, cfg.d_model, bias=cfg.mlp_bias)
        self.w_down.is_residual_out = True

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        g = self.w_gate(x)
        g = F.silu(g) if self.kind == "swiglu" else F.gelu(g, approximate="tanh")
        return self.w_down(g * self.w_up(x))
