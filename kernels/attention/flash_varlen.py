"""flash-attn's varlen kernel (optional GPU extra), used for packed self-attention.

Documents become sequences via cu_seqlens, so no mask is built and no work is spent on
cross-document blocks. Only for self-attention (same queries and keys, no offsets) in
fp16/bf16 on CUDA; everything else goes to the other paths.
"""
from __future__ import annotations

import torch

from kernels.dispatch import has_module

AVAILABLE = has_module("flash_attn")


def supports(q: torch.Tensor, tq: int, tk: int, q_offset: int, k_offset: int) -> bool:
    return (
        AVAILABLE and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
        and tq == tk and q_offset == k_offset and q.shape[-1] <= 256
    )


def cu_seqlens_from_doc_ids(doc_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Flattened [B*T] boundaries: a new sequence starts at every row start and doc change."""
    b, t = doc_ids.shape
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    idx = torch.nonzero(starts.reshape(-1), as_tuple=False).squeeze(1).to(torch.int32)
    cu = torch.cat([idx, torch.tensor([b * t], dtype=torch.int32, device=doc_ids.device)])
    return cu, int((cu[1:] - cu[:-1]).max().item())


def attention_flash_varlen(q, k, v, *, causal=True, window=None, q_doc_ids=None, k_doc_ids=None,
                           q_offset=0, k_offset=0, scale=None, return_lse=True):
    from flash_attn import flash_attn_varlen_func

    b, t, h, d = q.shape
    if q_doc_ids is None:
        q_doc_ids = torch.zeros(b, t, dtype=torch.int32, device=q.device)
    cu, max_len = cu_seqlens_from_doc_ids(q_doc_ids)
    win = (window - 1, 0 if causal else window - 1) if window is not None else (-1, -1)
    out, lse, _ = flash_attn_varlen_func(
        q.reshape(b * t, h, d), k.reshape(b * t, k.shape[2], d), v.reshape(b * t, v.shape[2], d),
        cu, cu, max_len, max_len, softmax_scale=scale, causal=causal, window_size=win,
        return_attn_probs=True,
    )
    lse = lse.reshape(h, b, t).transpose(0, 1) if lse.dim() == 2 else lse
    return out.reshape(b, t, h, d), lse
