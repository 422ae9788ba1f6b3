"""Banded (block-local) evaluation of sliding-window attention, O(T·window) instead of O(T²).

Generic attention kernels that take a mask (SDPA on CPU, or on GPU with a mask) compute every
query-key pair and then mask, so a `W` layer would cost as much as `*`. With a window w, query
i only sees keys i−w+1..i, which all lie in i's own block of w tokens or the block before. So
the sequence is cut into blocks of w queries; each block attends to [previous block, own
block] (2w keys) with q_offset = w, and the blocks are stacked on the batch dimension: one
kernel call, same kernel, exact result. Document masking uses segment ids (kernels/segments.py);
the keys before block 0 are padding with segment −1, which no query shares.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.attention import attention
from kernels.segments import segment_ids


def blocks_with_previous(z: torch.Tensor, blk: int, fill) -> torch.Tensor:
    """[B, nb·blk, ...] -> [B·nb, 2·blk, ...]: each block preceded by the block before it."""
    b, t = z.shape[:2]
    nb = t // blk
    own = z.reshape(b, nb, blk, *z.shape[2:])
    first = torch.full_like(own[:, :1], fill)
    prev = torch.cat([first, own[:, :-1]], dim=1)
    return torch.cat([prev, own], dim=2).reshape(b * nb, 2 * blk, *z.shape[2:])


def banded_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                            doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Causal sliding-window attention (key j visible to query i iff 0 ≤ i−j < window, same
    document) for q [B, T, H, D], k/v [B, T, Hkv, D]; returns [B, T, H, D]."""
    b, t = q.shape[:2]
    blk = window
    pad = (-t) % blk
    seg = segment_ids(doc_ids) if doc_ids is not None else torch.zeros(b, t, dtype=torch.int64, device=q.device)
    if pad:  # padded keys come after every real query, so causality hides them; padded queries are dropped
        q, k, v = (F.pad(z, (0, 0, 0, 0, 0, pad)) for z in (q, k, v))
        seg = F.pad(seg, (0, pad), value=-2)
    nb = (t + pad) // blk
    qb = q.reshape(b * nb, blk, *q.shape[2:])
    kb, vb = blocks_with_previous(k, blk, 0.0), blocks_with_previous(v, blk, 0.0)
    q_seg = seg.reshape(b * nb, blk)
    k_seg = blocks_with_previous(seg, blk, -1)
    o = attention(qb, kb, vb, causal=True, window=window, q_doc_ids=q_seg, k_doc_ids=k_seg,
                  q_offset=blk, k_offset=0)
    return o.reshape(b, nb * blk, *o.shape[2:])[:, :t]
