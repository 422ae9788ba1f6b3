"""Attention mixers: `*` global causal attention and `W` sliding-window attention.

Grouped-query attention: n_heads query heads share n_kv_heads key/value heads, which stay
un-expanded all the way into the kernel (and, under sequence parallelism, onto the wire).
RoPE is applied from ctx.positions; documents are kept apart with ctx.doc_ids.
"""
from __future__ import annotations

import torch
from torch import nn

from kernels.attention import attention
from models.config import ModelConfig
from models.context import MixerContext
from models.rope import apply_rope, rope_angles


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, window: int | None = None):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.attn_head_dim
        self.window = window
        self.rope_theta = cfg.rope_theta
        self.wq = nn.Linear(cfg.d_model, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, cfg.d_model, bias=False)
        self.wo.is_residual_out = True

    def project_qkv(self, x: torch.Tensor, positions: torch.Tensor):
        """q [B, T, H, D], k and v [B, T, Hkv, D], with RoPE applied to q and k."""
        b, t, _ = x.shape
        # head counts come from the weights so a tensor-parallel shard (fewer local heads) works unchanged
        q = self.wq(x).view(b, t, -1, self.head_dim)
        k = self.wk(x).view(b, t, -1, self.head_dim)
        v = self.wv(x).view(b, t, -1, self.head_dim)
        cos, sin = rope_angles(positions, self.head_dim, self.rope_theta, x.dtype)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x: torch.Tensor, ctx: MixerContext) -> torch.Tensor:
        q, k, v = self.project_qkv(x, ctx.positions)
        if ctx.sp is not None:
            o = ctx.sp.attention(q, k, v, causal=True, window=self.window, doc_ids=ctx.doc_ids)
        else:
            o = attention(q, k, v, causal=True, window=self.window,
                          q_doc_ids=ctx.doc_ids, k_doc_ids=ctx.doc_ids)
        return self.wo(o.reshape(x.shape[0], x.shape[1], -1))
