"""Chunked SSD in plain PyTorch (Mamba-2's "state space duality" algorithm, written by us).

The sequence is cut into chunks of L tokens. Inside a chunk the recurrence is unrolled into
a masked quadratic form (like causal attention with a decay mask); across chunks only the
[h,p,n] states travel. Per chunk c with log-decays a = dt·A and their in-chunk prefix sums S:
  1. intra-chunk:  Y_diag[i] = Σ_{j≤i} (C_i·B_j) · exp(S_i − S_j) · dt_j x_j
  2. chunk state:  Σ_j exp(S_last − S_j) · dt_j x_j ⊗ B_j           (what the chunk adds)
  3. inter-chunk:  H_c = exp(S_last)·H_{c−1} + chunk state           (sequential over chunks)
  4. state→output: Y_off[i] = exp(S_i) · C_i·H_{c−1}
exp(S_i − S_j) is taken as a difference of in-chunk prefix sums (as mamba-ssm's kernels do):
the sums restart every chunk, so they stay small and float32 keeps ~1e-6 relative accuracy
for chunks of 64–256 tokens. Document boundaries are exact:
every term linking two positions (or a position and the carried state) is kept only when
both lie in the same segment (kernels/segments.py); segments never decrease, so one
comparison per pair suffices. Cost: O(T·L) for the quadratic part, O(T/L) sequential steps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.segments import compute_dtype, segment_ids
from kernels.ssd.gating import with_gating


def chunk_decay_matrix(a_cum: torch.Tensor) -> torch.Tensor:
    """[..., L] in-chunk prefix sums of log-decays -> [..., L, L] with out[i, j] = exp(S_i − S_j)
    for j ≤ i and 0 above the diagonal (masked before exp, so no inf·0 in the gradient)."""
    L = a_cum.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool, device=a_cum.device).tril()
    diff = a_cum[..., :, None] - a_cum[..., None, :]
    return torch.exp(diff.masked_fill(~causal, float("-inf")))


@with_gating
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
    Bf, Cf = B.to(acc), C.to(acc)
    if pad:  # padded tokens have dt = 0: no decay, no input, so the final state is unaffected
        xf, dtf = F.pad(xf, (0, 0, 0, 0, 0, pad)), F.pad(dtf, (0, 0, 0, pad))
        Bf, Cf = F.pad(Bf, (0, 0, 0, 0, 0, pad)), F.pad(Cf, (0, 0, 0, 0, 0, pad))
        seg = F.pad(seg, (0, pad), mode="replicate") if seg.shape[1] > 0 else seg
    nc, r = (t + pad) // L, h // g
    # heads are kept as (group, head-in-group) so B and C are never copied per head
    Bc, Cc = Bf.view(b, nc, L, g, n), Cf.view(b, nc, L, g, n)
    segc = seg.view(b, nc, L)
    a = (dtf * A.to(acc)).view(b, nc, L, h).permute(0, 3, 1, 2)   # [b,h,c,l] log-decays
    a_cum = a.cumsum(dim=-1)
    xdt = (xf * dtf[..., None]).view(b, nc, L, g, r, p)

    # 1. intra-chunk (quadratic) part
    decay = chunk_decay_matrix(a_cum)                                # [b,h,c,l,s]
    if doc_ids is not None:
        decay = decay * (segc[:, :, :, None] == segc[:, :, None, :])[:, None].to(acc)
    cb = torch.einsum("bclgn,bcsgn->bgcls", Cc, Bc)                  # [b,g,c,l,s]
    scores = cb[:, :, None] * decay.view(b, g, r, nc, L, L)
    y = torch.einsum("bgrcls,bcsgrp->bclgrp", scores, xdt)

    # 2. what each chunk adds to the state at its end
    last_seg = segc[:, :, -1:]
    to_end = torch.exp(a_cum[..., -1:] - a_cum) * (segc == last_seg)[:, None].to(acc)  # [b,h,c,l]
    xdt_end = xdt * to_end.permute(0, 2, 3, 1).reshape(b, nc, L, g, r, 1)
    chunk_states = torch.einsum("bclgn,bclgrp->bcgrpn", Bc, xdt_end).reshape(b, nc, h, p, n)

    # 3. inter-chunk recurrence: states entering each chunk
    state = (torch.zeros(b, h, p, n, dtype=acc, device=x.device) if initial_state is None
             else initial_state.to(acc))
    prev_seg = torch.cat([segc[:, :1, 0], segc[:, :-1, -1]], dim=1)  # [b,c]: segment of the carried state
    chunk_decay = torch.exp(a_cum[..., -1])                          # [b,h,c]
    carry_ok = (last_seg[..., 0] == prev_seg).to(acc)                # [b,c]
    # unbind once: indexing chunk c inside the loop would make autograd scatter each slice's
    # gradient into a full-size zero tensor, O(chunks²) work in the backward pass
    keeps = (chunk_decay * carry_ok[:, None]).unbind(dim=2)         # per chunk [b,h]
    entering = []
    for keep, added in zip(keeps, chunk_states.unbind(dim=1)):
        entering.append(state)
        state = keep[..., None, None] * state + added
    entering = torch.stack(entering, dim=1)                          # [b,c,h,p,n]

    # 4. carried state -> outputs
    from_start = torch.exp(a_cum) * (segc == prev_seg[..., None])[:, None].to(acc)  # [b,h,c,l]
    y_off = torch.einsum("bclgn,bcgrpn->bclgrp", Cc, entering.view(b, nc, g, r, p, n))
    y = y + y_off * from_start.permute(0, 2, 3, 1).reshape(b, nc, L, g, r, 1)

    y = y.reshape(b, nc * L, h, p)[:, :t]
    if D is not None:
        y = y + D.to(acc)[:, None] * xf[:, :t]
    y = y.to(x.dtype)
    return (y, state) if return_final_state else y
