"""The one definition of who may attend to whom, shared by every attention path.

Query row i has global index q_offset + i, key column j has k_offset + j (offsets let the
sequence-parallel code compute a block of local queries against a remote key chunk).
Key j is visible to query i iff
  - causal:  k_idx <= q_idx,
  - window:  q_idx - k_idx < window (with causal), |q_idx - k_idx| < window (without),
  - documents: q_doc_ids[b, i] == k_doc_ids[b, j].
"""
from __future__ import annotations

import torch


def visible_mask(
    tq: int,
    tk: int,
    *,
    causal: bool,
    window: int | None = None,
    q_doc_ids: torch.Tensor | None = None,
    k_doc_ids: torch.Tensor | None = None,
    q_offset: int = 0,
    k_offset: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor | None:
    """Boolean mask [B or 1, 1, tq, tk] (True = may attend), or None when everything is visible."""
    if q_doc_ids is not None and device is None:
        device = q_doc_ids.device
    mask = None
    if causal or window is not None:
        qi = torch.arange(tq, device=device).unsqueeze(1) + q_offset
        kj = torch.arange(tk, device=device).unsqueeze(0) + k_offset
        diff = qi - kj
        m = torch.ones(tq, tk, dtype=torch.bool, device=device)
        if causal:
            m &= diff >= 0
        if window is not None:
            m &= (diff < window) if causal else (diff.abs() < window)
        mask = m[None, None]
    if (q_doc_ids is None) != (k_doc_ids is None):
        raise ValueError("pass both q_doc_ids and k_doc_ids, or neither")
    if q_doc_ids is not None:
        same = (q_doc_ids[:, :, None] == k_doc_ids[:, None, :])[:, None]
        mask = same if mask is None else (mask & same)
    return mask


def is_plain_causal(tq: int, tk: int, causal: bool, window, q_doc_ids, q_offset: int, k_offset: int) -> bool:
    """True when the mask is exactly the lower triangle (fast kernels take is_causal, no mask)."""
    return causal and window is None and q_doc_ids is None and tq == tk and q_offset == k_offset


def uniform_documents(q_doc_ids, k_doc_ids) -> bool:
    """True when every query and every key of each row belong to one and the same document, so
    documents mask nothing (a single-document row, or a block inside one document)."""
    if q_doc_ids is None:
        return True
    first = q_doc_ids[:, :1]
    return bool((q_doc_ids == first).all()) and bool((k_doc_ids == first.to(k_doc_ids.dtype)).all())


def mask_kind(tq: int, tk: int, causal: bool, window, q_doc_ids, k_doc_ids, q_offset: int, k_offset: int) -> str:
    """Which kernel form the visibility rule needs: "none" (every key visible to every query:
    no mask, not causal), "causal" (exactly the lower triangle) or "masked" (anything else).

    Off-diagonal blocks of a split sequence whose keys all precede their queries are "none",
    whatever their offsets; documents count only when they actually separate tokens."""
    if (q_doc_ids is None) != (k_doc_ids is None):
        raise ValueError("pass both q_doc_ids and k_doc_ids, or neither")
    if not uniform_documents(q_doc_ids, k_doc_ids):
        return "masked"
    lo = q_offset - (k_offset + tk - 1)              # smallest q_idx - k_idx of the block
    hi = q_offset + tq - 1 - k_offset                 # largest
    if causal:
        in_window = window is None or hi < window
        if lo >= 0 and in_window:
            return "none"
        if tq == tk and q_offset == k_offset and in_window:
            return "causal"
        return "masked"
    if window is None or max(abs(lo), abs(hi)) < window:
        return "none"
    return "masked"
