"""Document segments for the recurrent kernels (SSD, linear scan, causal conv).

A document boundary is any change of doc_id between neighbouring tokens (DESIGN.md §2), so
two tokens share a document only if no boundary lies between them. Comparing raw doc ids
would be wrong for rows like [0, 1, 0]; comparing *segment* ids (the running count of
boundaries) is exact, and segment ids never decrease, which the chunked kernels rely on.
"""
from __future__ import annotations

import torch


def segment_ids(doc_ids: torch.Tensor) -> torch.Tensor:
    """int64 [B, T]: number of document boundaries at or before each position (0 for token 0)."""
    change = (doc_ids[:, 1:] != doc_ids[:, :-1]).to(torch.int64)
    return torch.nn.functional.pad(change, (1, 0)).cumsum(dim=1)


def reset_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """bool [B, T]: True where a new document starts (never at token 0, whose carry-in is the
    caller's initial state by contract)."""
    change = doc_ids[:, 1:] != doc_ids[:, :-1]
    return torch.nn.functional.pad(change, (1, 0), value=False)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
