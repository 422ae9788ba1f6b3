"""Attention mixers: `*` global causal attention and `W` sliding-window attention.

Grouped-query attention: n_heads query heads share n_kv_heads key/value heads, which stay
un-expanded all the way into the kernel (and, under sequence parallelism, onto the wire).
RoPE is applied from ctx.positions; documents are kept apart with ctx.doc_ids.

State (for state passing and step mode) is a KV cache dict: k, v [B, L, Hkv, D] (rotated
keys), `valid` bool [B, L] (key belongs to the document being continued) and `pos` int64 [B]
(RoPE position of the next token). `*` keeps every key; `W` keeps the last window − 1 keys
(a rolling window: with the next token that is exactly what a query may see).
"""
from __future__ import annotations

import torch
from torch import nn

from kernels.attention import attention, select_attention_path
from kernels.segments import segment_ids
from models.config import ModelConfig
from models.context import MixerContext
from models.local_attention import banded_window_attention
from models.rope import apply_rope, rope_angles, rope_spec, rotary_dim


def keep_last(z: torch.Tensor, n: int) -> torch.Tensor:
    """The last n entries along dim 1 (all of them when there are fewer)."""
    return z[:, max(0, z.shape[1] - n):]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, window: int | None = None):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.attn_head_dim
        self.window = window
        self.rope = rope_spec(cfg)
        self.rotary_dim = rotary_dim(self.head_dim, cfg.rope_fraction)
        qkv_bias = cfg.attn_qkv_bias
        self.wq = nn.Linear(cfg.d_model, self.n_heads * self.head_dim, bias=qkv_bias)
        self.wk = nn.Linear(cfg.d_model, self.n_kv_heads * self.head_dim, bias=qkv_bias)
        self.wv = nn.Linear(cfg.d_model, self.n_kv_heads * self.head_dim, bias=qkv_bias)
        self.wo = nn.Linear(self.n_heads * self.head_dim, cfg.d_model, bias=cfg.attn_out_bias)
        self.wo.is_residual_out = True

    def rope_length(self, positions: torch.Tensor, sp=None) -> int | None:
        """Dynamic NTK's length: 1 + the largest position of the call (over all sequence-parallel
        ranks, so each rank rotates with the same frequencies); None for every other scaling."""
        if self.rope.scaling != "dynamic":
            return None
        top = positions.max()
        if sp is not None:
            top = sp.global_max(top)
        return int(top) + 1

    def project_qkv(self, x: torch.Tensor, positions: torch.Tensor, sp=None):
        """q [B, T, H, D], k and v [B, T, Hkv, D], with RoPE applied to q and k."""
        b, t, _ = x.shape
        # head counts come from the weights so a tensor-parallel shard (fewer local heads) works unchanged
        q = self.wq(x).view(b, t, -1, self.head_dim)
        k = self.wk(x).view(b, t, -1, self.head_dim)
        v = self.wv(x).view(b, t, -1, self.head_dim)
        cos, sin = rope_angles(positions, self.rotary_dim, self.rope, x.dtype, self.rope_length(positions, sp))
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x: torch.Tensor, ctx: MixerContext) -> torch.Tensor:
        q, k, v = self.project_qkv(x, ctx.positions, ctx.sp)
        cache = ctx.initial_state(self.layer_idx)
        if ctx.sp is not None:
            if cache is not None:
                raise NotImplementedError("attention: an initial KV cache under sequence parallelism is "
                                          "not supported; pass initial states without sp")
            o = ctx.sp.attention(q, k, v, causal=True, window=self.window, doc_ids=ctx.doc_ids)
        elif cache is None and self.use_banded(q, k):
            o = banded_window_attention(q, k, v, self.window, ctx.doc_ids)
        elif cache is None:
            o = attention(q, k, v, causal=True, window=self.window,
                          q_doc_ids=ctx.doc_ids, k_doc_ids=ctx.doc_ids)
        else:
            o = self.attend_with_cache(q, k, v, cache, ctx.doc_ids)
        if ctx.return_states:
            ctx.set_final_state(self.layer_idx, self.next_cache(cache, k, v, ctx))
        return self.wo(o.reshape(x.shape[0], x.shape[1], -1))

    def use_banded(self, q: torch.Tensor, k: torch.Tensor) -> bool:
        """Block-local evaluation for W when the chosen kernel would compute all T² pairs
        (SDPA with a mask); fused kernels (flash-attn, Triton) skip out-of-window blocks."""
        t = q.shape[1]
        return (self.window is not None and t > 2 * self.window
                and select_attention_path(q, k.shape[1], 0, 0, False) == "sdpa")

    def attend_with_cache(self, q, k, v, cache: dict, doc_ids: torch.Tensor | None) -> torch.Tensor:
        """Queries of this chunk over [cached keys, own keys]. The cache precedes token 0, so it
        is visible to the tokens of token 0's document only, and only its `valid` keys."""
        b, t = q.shape[:2]
        n_cached = cache["k"].shape[1]
        seg = segment_ids(doc_ids) if doc_ids is not None else torch.zeros(b, t, dtype=torch.int64,
                                                                           device=q.device)
        cached_seg = torch.where(cache["valid"], 0, -1).to(seg.dtype)
        k_all = torch.cat([cache["k"].to(k.dtype), k], dim=1)
        v_all = torch.cat([cache["v"].to(v.dtype), v], dim=1)
        return attention(q, k_all, v_all, causal=True, window=self.window, q_doc_ids=seg,
                         k_doc_ids=torch.cat([cached_seg, seg], dim=1), q_offset=n_cached, k_offset=0)

    def next_cache(self, cache: dict | None, k, v, ctx: MixerContext) -> dict:
        """The cache after this chunk: keys of the last document only are `valid`."""
        b, t = k.shape[:2]
        if ctx.doc_ids is not None:
            seg = segment_ids(ctx.doc_ids)
            valid = seg == seg[:, -1:]
            carried_ok = (seg[:, -1] == 0)[:, None]          # cached keys stay valid only without a boundary
        else:
            valid = torch.ones(b, t, dtype=torch.bool, device=k.device)
            carried_ok = torch.ones(b, 1, dtype=torch.bool, device=k.device)
        if cache is not None:
            k = torch.cat([cache["k"].to(k.dtype), k], dim=1)
            v = torch.cat([cache["v"].to(v.dtype), v], dim=1)
            valid = torch.cat([cache["valid"] & carried_ok, valid], dim=1)
        if self.window is not None:
            k, v, valid = (keep_last(z, self.window - 1) for z in (k, v, valid))
        return {"k": k, "v": v, "valid": valid, "pos": ctx.positions[:, -1].to(torch.int64) + 1}

    def init_cache(self, batch_size: int, device=None, dtype=torch.float32) -> dict:
        """Empty KV cache; the next token gets RoPE position 0."""
        hd, hkv = self.head_dim, self.wk.out_features // self.head_dim
        return {"k": torch.zeros(batch_size, 0, hkv, hd, device=device, dtype=dtype),
                "v": torch.zeros(batch_size, 0, hkv, hd, device=device, dtype=dtype),
                "valid": torch.zeros(batch_size, 0, dtype=torch.bool, device=device),
                "pos": torch.zeros(batch_size, dtype=torch.int64, device=device)}

    def step(self, x: torch.Tensor, cache: dict):
        """One token x [B, d_model] -> (y [B, d_model], next cache); same weights as forward."""
        q, k, v = self.project_qkv(x[:, None], cache["pos"][:, None])
        valid = torch.cat([cache["valid"], torch.ones_like(cache["valid"][:, :1])], dim=1)
        k_all = torch.cat([cache["k"].to(k.dtype), k], dim=1)
        v_all = torch.cat([cache["v"].to(v.dtype), v], dim=1)
        key_doc = torch.where(valid, 0, -1)
        o = attention(q, k_all, v_all, causal=False, q_doc_ids=key_doc[:, -1:], k_doc_ids=key_doc)
        if self.window is not None:
            k_all, v_all, valid = (keep_last(z, self.window - 1) for z in (k_all, v_all, valid))
        new = {"k": k_all, "v": v_all, "valid": valid, "pos": cache["pos"] + 1}
        return self.wo(o.reshape(x.shape[0], -1)), new
