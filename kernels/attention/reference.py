"""Reference attention: materialises the full score matrix. Slow, obviously correct.

Layout (flash-attn's): q [B, Tq, H, D], k and v [B, Tk, Hkv, D] with H a multiple of Hkv
(GQA/MQA: query head h reads kv head h // (H // Hkv)). Returns the output [B, Tq, H, D] and
the log-sum-exp of the scaled, masked scores [B, H, Tq] in float32 (or float64 for float64
inputs). A query that sees no key gets output 0 and lse -inf.
"""
from __future__ import annotations

import math

import torch

from kernels.attention.masks import visible_mask


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    window: int | None = None,
    q_doc_ids: torch.Tensor | None = None,
    k_doc_ids: torch.Tensor | None = None,
    q_offset: int = 0,
    k_offset: int = 0,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    b, tq, h, d = q.shape
    tk, hkv = k.shape[1], k.shape[2]
    rep = h // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf = q.transpose(1, 2).to(acc)                                   # [B, H, Tq, D]
    kf = k.transpose(1, 2).to(acc).repeat_interleave(rep, dim=1)     # [B, H, Tk, D]
    vf = v.transpose(1, 2).to(acc).repeat_interleave(rep, dim=1)
    s = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    mask = visible_mask(
        tq, tk, causal=causal, window=window, q_doc_ids=q_doc_ids, k_doc_ids=k_doc_ids,
        q_offset=q_offset, k_offset=k_offset, device=q.device,
    )
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)                                 # [B, H, Tq]
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    p = torch.exp(s - safe.unsqueeze(-1))                            # masked entries -> 0
    o = torch.matmul(p, vf).transpose(1, 2).to(q.dtype)
    return o, lse
