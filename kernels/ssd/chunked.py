"""Chunked SSD in plain PyTorch (Mamba-2's "state space duality" algorithm, written by us).

The sequence is cut into chunks of L tokens. Inside a chunk the recurrence is unrolled into
a masked quadratic form (like causal attention with a decay mask); across chunks only the
[h,p,n] states travel. Per chunk c with log-decays a = dt·A and their in-chunk prefix sums S:
  1. intra-chunk:  Y_diag[i] = Σ_{j≤i} (C_i·B_j) · exp(S_i − S_j) · dt_j x_j
  2. chunk state:  Σ_j exp(S_last − S_j) · dt_j x_j ⊗ B_j           (what the chunk adds)
  3. inter-chunk:  H_c = exp(S_last)·H_{c−1} + chunk state           (sequential over chunks)
  4. state→output: Y_off[i] = exp(S_i) · C_i·H_{c−1}
exp(S_i − S_j) comes from a "segment sum" (a masked cumulative sum of a, never a difference
of two large prefix sums) so long chunks lose no precision. Document boundaries are exact:
every term linking two positions (or a position and the carried state) is kept only when
both lie in the same segment (kernels/segments.py); segments never decrease, so one
comparison per pair suffices. Cost: O(T·L) for the quadratic part, O(T/L) sequential steps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.segments import compute_dtype, segment_ids


def segsum(a: torch.Tensor) -> torch.Tensor:
    """[..., L] -> [..., L, L] with out[i, j] = a[j+1] + ... + a[i] for j ≤ i, −inf above."""
    L = a.shape[-1]
    rep = a[..., :, None].expand(*a.shape, L)                   # rep[..., i, j] = a[i]
    lower_strict = torch.ones(L, L, dtype=torch.bool, device=a.device).tril(-1)
    summed = rep.masked_fill(~lower_strict, 0).cumsum(dim=-2)   # Σ_{k≤i, k>j} a[k]
    causal = torch.ones(L, L, dtype=torch.bool, device=a.device).tril()
    return summed.masked_fill(~causal, float("-inf"))


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    doc_ids: torch.Tensor | None = None,
    return_final_state: bool = False,
    chunk_size: int = 64,
):
    """Same contract as ssd_reference (kernels/ssd/reference.py); chunk_size trades the
    quadratic in-chunk work against the number of sequential inter-chunk steps."""
    b, t, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    if h % g:
        raise ValueError(f"ssd: heads {h} must be a multiple of groups {g}")
    acc = compute_dtype(x.dtype)
    L = max(1, min(chunk_size, t))
    pad = (-t) % L
    seg = segment_ids(doc_ids) if doc_ids is not None else torch.zeros(b, t, dtype=torch.int64, device=x.device)
    xf, dtf = x.to(acc), dt.to(acc)
    Bh = B.to(acc).repeat_interleave(h // g, dim=2)
    Ch = C.to(acc).repeat_interleave(h // g, dim=2)
    if pad:  # padded tokens have dt = 0: no decay, no input, so the final state is unaffected
        xf, dtf = F.pad(xf, (0, 0, 0, 0, 0, pad)), F.pad(dtf, (0, 0, 0, pad))
        Bh, Ch = F.pad(Bh, (0, 0, 0, 0, 0, pad)), F.pad(Ch, (0, 0, 0, 0, 0, pad))
        seg = F.pad(seg, (0, pad), mode="replicate") if seg.shape[1] > 0 else seg
    nc = (t + pad) // L
    xc = xf.view(b, nc, L, h, p)
    Bc, Cc = Bh.view(b, nc, L, h, n), Ch.view(b, nc, L, h, n)
    segc = seg.view(b, nc, L)
    a = (dtf * A.to(acc)).view(b, nc, L, h).permute(0, 3, 1, 2)   # [b,h,c,l] log-decays
    a_cum = a.cumsum(dim=-1)
    xdt = xc * dtf.view(b, nc, L, h, 1)

    # 1. intra-chunk (quadratic) part
    same = segc[:, :, :, None] == segc[:, :, None, :]                # [b,c,l,s]
    decay = torch.exp(segsum(a)) * same[:, None].to(acc)             # [b,h,c,l,s]
    scores = torch.einsum("bclhn,bcshn->bhcls", Cc, Bc) * decay
    y = torch.einsum("bhcls,bcshp->bclhp", scores, xdt)

    # 2. what each chunk adds to the state at its end
    last_seg = segc[:, :, -1:]
    to_end = torch.exp(a_cum[..., -1:] - a_cum) * (segc == last_seg)[:, None].to(acc)  # [b,h,c,l]
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, to_end, xdt)

    # 3. inter-chunk recurrence: states entering each chunk
    state = (torch.zeros(b, h, p, n, dtype=acc, device=x.device) if initial_state is None
             else initial_state.to(acc))
    prev_seg = torch.cat([segc[:, :1, 0], segc[:, :-1, -1]], dim=1)  # [b,c]: segment of the carried state
    chunk_decay = torch.exp(a_cum[..., -1])                          # [b,h,c]
    carry_ok = (last_seg[..., 0] == prev_seg).to(acc)                # [b,c]
    entering = []
    for c in range(nc):
        entering.append(state)
        keep = chunk_decay[:, :, c] * carry_ok[:, c, None]
        state = keep[..., None, None] * state + chunk_states[:, c]
    entering = torch.stack(entering, dim=1)                          # [b,c,h,p,n]

    # 4. carried state -> outputs
    from_start = torch.exp(a_cum) * (segc == prev_seg[..., None])[:, None].to(acc)  # [b,h,c,l]
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, entering, from_start)

    y = y.reshape(b, nc * L, h, p)[:, :t]
    if D is not None:
        y = y + D.to(acc)[:, None] * xf[:, :t]
    y = y.to(x.dtype)
    return (y, state) if return_final_state else y
