"""Exact state passing for the recurrent mixers (Mamba-2 SSD, Griffin's linear scan) under SP.

Both recurrences are linear in the carried state: h_t = decay_t · h_{t-1} + u_t. So each rank
scans its chunk from a zero state, getting outputs y⁰ and a local final state S_r, plus the
chunk's total decay Λ_r (0 when a document starts inside the chunk). The true carry into
rank r is the prefix S_in_r = g_r · (S_{r-1} + Λ_{r-1} · S_in_{r-1}), with g_r = 0 when a
document starts exactly at the chunk boundary. (S_r, Λ_r) are all-gathered (state-sized, far
smaller than activations) and every rank evaluates its own prefix; then the outputs are
corrected by the carry's decayed contribution, which is exact because the scan is linear.
The gather's backward is an all-reduce of the per-rank gradients, which delivers
d(initial state) of every later rank to the ranks that produced it.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from parallel.sequence.chunks import ChunkLayout
from parallel.sequence.p2p import SPGroup


class GatherFunction(torch.autograd.Function):
    """[P, ...] stack of every rank's tensor; backward sums every rank's gradient for my slot."""

    @staticmethod
    def forward(ctx, x, g: SPGroup, cached, record):
        ctx.g, ctx.record = g, record
        before = g.bytes_sent
        out = torch.stack(g.all_gather(x)) if cached is None else cached.clone()
        if record is not None:
            record.fwd_bytes += g.bytes_sent - before
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        g = ctx.g
        dist.all_reduce(grad, group=g.group)
        if ctx.record is not None:
            ctx.record.bwd_bytes += grad.numel() * grad.element_size() * 2 * (g.world - 1) // g.world
        return grad[g.rank], None, None, None


def alive_mask(doc_ids: torch.Tensor | None, b: int, t: int, device) -> torch.Tensor:
    """bool [b, t]: token t still continues the document of token 0 (no boundary in 1..t)."""
    if doc_ids is None:
        return torch.ones(b, t, dtype=torch.bool, device=device)
    same = doc_ids[:, 1:] == doc_ids[:, :-1]
    return torch.cat([torch.ones(b, 1, dtype=torch.bool, device=device), same], dim=1).cumprod(dim=1).bool()


def boundary_links(chunks: ChunkLayout, b: int, device) -> list[torch.Tensor]:
    """links[r] [b] = 1 if rank r's first token continues rank r−1's last document (links[0] = 1)."""
    links = [torch.ones(b, device=device)]
    for r in range(1, chunks.world):
        if chunks.docs is None:
            links.append(torch.ones(b, device=device))
        else:
            links.append((chunks.docs[r][:, 0] == chunks.docs[r - 1][:, -1]).to(device).float())
    return links


def carry_in(local_final: torch.Tensor, total_decay: torch.Tensor, initial, chunks: ChunkLayout,
             g: SPGroup, cached, record):
    """(carry into this rank, gathered stacks) from every rank's (local final state, total decay).

    total_decay broadcasts against the state (trailing singleton dims)."""
    packed = torch.cat([local_final.flatten(1), total_decay.flatten(1).to(local_final.dtype)], dim=1)
    gathered = GatherFunction.apply(packed, g, cached, record)
    width = local_final[0].numel()
    links = boundary_links(chunks, local_final.shape[0], local_final.device)
    state = torch.zeros_like(local_final) if initial is None else initial.to(local_final.dtype)
    # rank 0 reads nothing from the gather; a zero-size read keeps it in the graph so every rank
    # joins the backward all-reduce
    state = state + gathered[:0].sum()
    for j in range(g.rank):
        s_j = gathered[j][:, :width].view_as(local_final)
        lam_j = gathered[j][:, width:].view_as(total_decay)
        link = links[j + 1].to(state.dtype).view(-1, *([1] * (state.dim() - 1)))
        state = link * (s_j + lam_j * state)
    return state, gathered


def sp_ssd(g: SPGroup, chunks: ChunkLayout, ssd_fn, x, dt, A, B, C, *, D, doc_ids, initial_state,
           chunk_size, cached=None, record=None):
    """(y, final_state, gathered) for this rank's chunk; final_state is the state after the
    chunk (the global final state on the last rank)."""
    y0, s_loc = ssd_fn(x, dt, A, B, C, D=D, doc_ids=doc_ids, initial_state=None,
                       return_final_state=True, chunk_size=chunk_size)
    acc = s_loc.dtype
    b, t, h, _ = x.shape
    alive = alive_mask(doc_ids, b, t, x.device).to(acc)
    decay = torch.exp(torch.cumsum(dt.to(acc), dim=1) * A.to(acc)) * alive[..., None]   # [b,t,h]
    lam = decay[:, -1]                                                                   # [b,h]
    s_in, gathered = carry_in(s_loc, lam[..., None, None], initial_state, chunks, g, cached, record)
    ch = C.to(acc).repeat_interleave(h // C.shape[2], dim=2)                             # [b,t,h,n]
    corr = torch.einsum("bthn,bhpn->bthp", ch, s_in) * decay[..., None]
    y = (y0.to(acc) + corr).to(y0.dtype)
    final = s_loc + lam[..., None, None] * s_in
    return y, final, gathered


def sp_linear_scan(g: SPGroup, chunks: ChunkLayout, scan_fn, a, x, *, doc_ids, initial_state,
                   cached=None, record=None):
    """(h, final_state, gathered) for this rank's chunk of h_t = a_t ⊙ h_{t−1} + x_t."""
    h0, f_loc = scan_fn(a, x, doc_ids=doc_ids, initial_state=None, return_final_state=True)
    acc = f_loc.dtype
    b, t, _ = x.shape
    alive = alive_mask(doc_ids, b, t, x.device).to(acc)
    decay = torch.cumprod(a.to(acc), dim=1) * alive[..., None]                          # [b,t,d]
    lam = decay[:, -1]
    h_in, gathered = carry_in(f_loc, lam, initial_state, chunks, g, cached, record)
    h = (h0.to(acc) + decay * h_in[:, None]).to(h0.dtype)
    final = f_loc + lam * h_in
    return h, final, gathered
