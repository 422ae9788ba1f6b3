"""Packed-document self-attention as per-document causal pieces (varlen without a mask).

A row of packed documents attends block-diagonally: each document is its own causal
sequence. Instead of a materialised [T, T] document mask (which makes every query-key pair
cost compute), the documents are cut out as pieces and run through the plain causal kernel.
To keep the number of kernel calls small, pieces of similar length share one call: each is
padded at its end to its bucket's length (a few buckets per octave) and the bucket is a
batch. Padding sits after every real token of its piece, so causal masking hides it from
real queries, and padded queries are dropped: the result is exact, forward and backward
(padded positions read a real token's values rather than a copied zero row, so no input is copied)
(gathers and scatters are plain indexing, which autograd differentiates).

Only when documents are contiguous runs (doc ids never decrease along a row) does raw
doc-id equality — the rule in masks.py — coincide with "same piece"; callers check that.
"""
from __future__ import annotations

import torch

BUCKETS_PER_OCTAVE = 4     # pad a piece by at most ~1/4 of its length
MIN_BUCKET = 16


def single_document_rows(doc_ids: torch.Tensor) -> bool:
    """True when every row holds one document (the plain causal triangle is exact)."""
    return bool((doc_ids == doc_ids[:, :1]).all())


def contiguous_documents(doc_ids: torch.Tensor) -> bool:
    """True when each doc id is one run in its row (ids never decrease), so pieces are documents."""
    return bool((doc_ids[:, 1:] >= doc_ids[:, :-1]).all())


def piece_bounds(doc_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat start, length) of every piece in the flattened [B*T] token order (int64, CPU)."""
    b, t = doc_ids.shape
    starts = torch.ones(b, t, dtype=torch.bool, device=doc_ids.device)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.nonzero(starts.reshape(-1)).squeeze(1).cpu()
    ends = torch.cat([first[1:], torch.tensor([b * t])])
    return first, ends - first


def bucket_length(n: int) -> int:
    """The padded length of a piece of n tokens: n rounded up to a step of 2^floor(log2 n)/4."""
    if n <= MIN_BUCKET:
        return MIN_BUCKET
    step = max(1, (1 << (n.bit_length() - 1)) // BUCKETS_PER_OCTAVE)
    return -(-n // step) * step


def buckets(starts: torch.Tensor, lengths: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """[(bucket length L, starts, lengths)] grouping the pieces that pad to the same L."""
    keys = torch.tensor([bucket_length(int(n)) for n in lengths.tolist()], dtype=torch.int64)
    out = []
    for L in torch.unique(keys).tolist():
        sel = keys == L
        out.append((int(L), starts[sel], lengths[sel]))
    return out


def piece_attention(q, k, v, doc_ids: torch.Tensor, causal_fn, return_lse: bool):
    """Causal attention of q [B,T,H,D] over k/v [B,T,Hkv,D] within documents.

    `causal_fn(q, k, v)` -> (o, lse or None) is the plain causal kernel on [n, L, ., D] batches.
    Returns (o [B,T,H,D], lse [B,H,T] or None)."""
    b, t, h, d = q.shape
    pad_row = b * t
    flat = [z.reshape(b * t, *z.shape[2:]) for z in (q, k, v)]      # padding reads a real token (below)
    starts, lengths = piece_bounds(doc_ids)
    outs, lses, dests = [], [], []
    for L, s, n in buckets(starts, lengths):
        pos = torch.arange(L)
        idx = torch.where(pos[None, :] < n[:, None], s[:, None] + pos[None, :], pad_row).to(q.device)
        src = idx.clamp(max=pad_row - 1)    # padded keys follow every real query (causal hides them);
        o, lse = causal_fn(*(z[src] for z in flat))   # padded queries' outputs are dropped below
        outs.append(o.reshape(-1, h, d))
        if return_lse:
            lses.append(lse.transpose(1, 2).reshape(-1, h))
        dests.append(idx.reshape(-1))
    dest = torch.cat(dests)
    src = torch.empty(pad_row + 1, dtype=torch.int64, device=q.device)
    src[dest] = torch.arange(dest.numel(), device=q.device)       # padded entries all land on pad_row
    src = src[:pad_row]
    o = torch.cat(outs)[src].reshape(b, t, h, d)
    lse = torch.cat(lses)[src].reshape(b, t, h).transpose(1, 2) if return_lse else None
    return o, lse
