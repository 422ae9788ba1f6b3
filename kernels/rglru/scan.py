"""Parallel linear scan h_t = a_t ⊙ h_{t−1} + x_t in plain PyTorch, fast on CPU and GPU.

Two levels, no Python loop over tokens:
  1. inside chunks of L tokens, a Hillis–Steele scan of the pairs (a, x) under the
     associative combine (a1, x1)∘(a2, x2) = (a1·a2, a2·x1 + x2): log2(L) whole-tensor passes
     give each token its in-chunk prefix (A_i = Π a, X_i = in-chunk h with zero carry-in);
  2. the chunk totals form a linear recurrence of length T/L, solved by the same function
     (recursively), which yields each chunk's carry-in c; then h_i = X_i + A_i · c.
Work O(T·log L), depth O(log T). Document resets set a_t = 0 at boundary tokens (a product
with 0, never a log/division, so gradients stay finite). No logs means a may be anything.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.segments import compute_dtype, reset_mask

CHUNK = 64


def _inchunk_scan(a: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive Hillis–Steele scan along dim -2 of [..., L, d] tensors."""
    L = a.shape[-2]
    k = 1
    while k < L:
        a_prev = F.pad(a[..., :-k, :], (0, 0, k, 0), value=1.0)
        x_prev = F.pad(x[..., :-k, :], (0, 0, k, 0), value=0.0)
        x = x + a * x_prev
        a = a * a_prev
        k *= 2
    return a, x


def _scan(a: torch.Tensor, x: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    b, t, d = x.shape
    if h0 is not None:  # fold the carry-in into token 0: h_0 = a_0·h0 + x_0
        x = torch.cat([x[:, :1] + a[:, :1] * h0[:, None], x[:, 1:]], dim=1)
    if t <= CHUNK:
        return _inchunk_scan(a, x)[1]
    pad = (-t) % CHUNK
    if pad:  # a = 1, x = 0 padding leaves the running state unchanged
        a, x = F.pad(a, (0, 0, 0, pad), value=1.0), F.pad(x, (0, 0, 0, pad))
    nc = (t + pad) // CHUNK
    A, X = _inchunk_scan(a.view(b, nc, CHUNK, d), x.view(b, nc, CHUNK, d))
    ends = _scan(A[:, :, -1], X[:, :, -1], None)                   # state at each chunk's end
    carry = F.pad(ends[:, :-1], (0, 0, 1, 0))                       # carry-in of each chunk
    h = X + A * carry[:, :, None]
    return h.reshape(b, nc * CHUNK, d)[:, :t]


def linear_scan_torch(
    a: torch.Tensor,
    x: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    doc_ids: torch.Tensor | None = None,
    return_final_state: bool = False,
):
    """Same contract as linear_scan_reference (kernels/rglru/reference.py)."""
    acc = compute_dtype(x.dtype)
    af, xf = a.to(acc), x.to(acc)
    if doc_ids is not None:
        af = af.masked_fill(reset_mask(doc_ids)[..., None], 0.0)
    h0 = None if initial_state is None else initial_state.to(acc)
    if x.shape[1] == 0:
        h = xf
        final = h0 if h0 is not None else xf.new_zeros(x.shape[0], x.shape[2])
    else:
        h = _scan(af, xf, h0)
        final = h[:, -1]
    return (h.to(x.dtype), final) if return_final_state else h.to(x.dtype)
