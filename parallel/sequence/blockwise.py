"""Attention on one (query chunk, key chunk) block: forward with LSE, log-sum-exp merge, and a
flash-style backward from the saved output and LSE.

DistAttn splits causal attention over ranks into blocks; each block's forward comes from
kernels.attention (with global offsets so masks are exact), partial results combine by
log-sum-exp, and the backward of a block needs only q, k, v, dO, the *final* LSE and
delta = rowsum(dO ⊙ O): P = exp(S − lse), dV = Pᵀ dO, dS = P ⊙ (dO Vᵀ − delta),
dQ = scale · dS K, dK = scale · dSᵀ Q. No block ever needs the forward's other blocks again.

On CPU both directions run torch's fused flash kernels (forward returns the LSE, backward
consumes it), so no [n, n] score matrix exists; the mask takes its cheapest exact form
(masks.mask_kind): none for fully visible blocks, the causal flag on the diagonal, a bias only
for partially masked blocks (windows, documents). On CUDA the block backward is our fused
Triton dq and dk/dv kernels fed the final LSE and delta (the same kernels as the forward's
autograd); the tiled materialised backward below is the reference path
(LONGWEAVE_KERNELS=reference, or a GPU without Triton).
"""
from __future__ import annotations

import math

import torch

from kernels.attention import attention, triton_ok, visible_mask
from kernels.attention.doc_pieces import buckets, contiguous_documents, piece_bounds, single_document_rows
from kernels.attention.masks import mask_kind
from kernels.dispatch import kernel_mode

Q_TILE = 512  # query rows per backward tile: bounds the materialised [rows, keys] scores


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def document_crop(q_docs, k_docs, q_offset: int, k_offset: int) -> tuple[slice, slice] | None:
    """(query rows, keys) of an off-diagonal block outside which documents hide everything, or
    None when that is the whole block. With packed documents, a later chunk's queries share
    documents only with the last documents of an earlier chunk: the visible part is typically
    one document's corner, computed unmasked instead of the whole block under a bias."""
    if q_docs is None or q_offset == k_offset:
        return None
    rows = torch.zeros(q_docs.shape[1], dtype=torch.bool, device=q_docs.device)
    keys = torch.zeros(k_docs.shape[1], dtype=torch.bool, device=k_docs.device)
    for b in range(q_docs.shape[0]):
        rows |= torch.isin(q_docs[b], k_docs[b])
        keys |= torch.isin(k_docs[b], q_docs[b])
    if not bool(rows.any()):
        return slice(0, 0), slice(0, 0)
    r, c = torch.nonzero(rows).squeeze(1), torch.nonzero(keys).squeeze(1)
    crop = slice(int(r[0]), int(r[-1]) + 1), slice(int(c[0]), int(c[-1]) + 1)
    if crop[0].stop - crop[0].start == rows.numel() and crop[1].stop - crop[1].start == keys.numel():
        return None
    return crop


def _cropped(q_docs, k_docs, q_offset, k_offset, rows: slice, keys: slice) -> dict:
    return dict(q_docs=q_docs[:, rows], k_docs=k_docs[:, keys], q_offset=q_offset + rows.start,
                k_offset=k_offset + keys.start)


def block_forward(q, k, v, *, window, q_docs, k_docs, q_offset: int, k_offset: int, scale: float):
    """(o [B,n,H,D] in the accumulation dtype, lse [B,H,n]) of q against one key chunk."""
    acc = acc_dtype(q.dtype)
    crop = document_crop(q_docs, k_docs, q_offset, k_offset)
    if crop is not None:
        rows, keys = crop
        o = torch.zeros(q.shape, dtype=acc, device=q.device)
        lse = torch.full((q.shape[0], q.shape[2], q.shape[1]), float("-inf"), dtype=acc, device=q.device)
        if rows.stop > rows.start:
            o[:, rows], lse[..., rows] = block_forward(
                q[:, rows], k[:, keys], v[:, keys], window=window, scale=scale,
                **_cropped(q_docs, k_docs, q_offset, k_offset, rows, keys))
        return o, lse
    o, lse = attention(q, k, v, causal=True, window=window, q_doc_ids=q_docs, k_doc_ids=k_docs,
                       q_offset=q_offset, k_offset=k_offset, scale=scale, return_lse=True)
    return o.to(acc), lse.to(acc)


def merge(o_acc, lse_acc, o_b, lse_b):
    """Combine two partial attention results over disjoint key sets by log-sum-exp.

    A row that saw no key in either part keeps lse -inf and output 0 (no NaN)."""
    if o_acc is None:
        return o_b, lse_b
    lse = torch.logaddexp(lse_acc, lse_b)
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    w_a = torch.exp(lse_acc - safe).transpose(1, 2).unsqueeze(-1)    # [B,n,H,1]
    w_b = torch.exp(lse_b - safe).transpose(1, 2).unsqueeze(-1)
    return o_acc * w_a + o_b * w_b, lse


def _heads_split(t: torch.Tensor, hkv: int) -> torch.Tensor:
    """[B,n,H,D] -> [B,Hkv,rep,n,D]."""
    b, n, h, d = t.shape
    return t.permute(0, 2, 1, 3).reshape(b, hkv, h // hkv, n, d)


def _heads_merge(t: torch.Tensor) -> torch.Tensor:
    """[B,Hkv,rep,n,D] -> [B,n,H,D]."""
    b, hkv, rep, n, d = t.shape
    return t.reshape(b, hkv * rep, n, d).permute(0, 2, 1, 3)


def block_backward(q, k, v, do, lse, delta, *, window, q_docs, k_docs, q_offset: int, k_offset: int,
                   scale: float, out=None):
    """(dq [B,n,H,D], dk, dv [B,m,Hkv,D]) of this block, in the accumulation dtype.

    lse [B,H,n] and delta [B,H,n] are the full (merged) row statistics of the forward. `out`: the
    final output of these query rows [B,n,H,D] where this rank holds it (the query owner); the
    fused kernel then reads it as is instead of a stand-in built from delta (stand_in_output)."""
    crop = document_crop(q_docs, k_docs, q_offset, k_offset)
    if crop is not None:
        rows, keys = crop
        acc = acc_dtype(q.dtype)
        dq = torch.zeros(q.shape, dtype=acc, device=q.device)
        dk = torch.zeros(k.shape, dtype=acc, device=k.device)
        dv = torch.zeros(v.shape, dtype=acc, device=v.device)
        if rows.stop > rows.start:
            dq[:, rows], dk[:, keys], dv[:, keys] = block_backward(
                q[:, rows], k[:, keys], v[:, keys], do[:, rows], lse[..., rows], delta[..., rows],
                window=window, scale=scale, out=None if out is None else out[:, rows],
                **_cropped(q_docs, k_docs, q_offset, k_offset, rows, keys))
        return dq, dk, dv
    kw = dict(window=window, q_docs=q_docs, k_docs=k_docs, q_offset=q_offset, k_offset=k_offset, scale=scale)
    path = backward_path(q)
    if path == "triton":
        return block_backward_triton(q, k, v, do, lse, delta, **kw)
    if path == "cpu_fused":
        if window is None and q_offset == k_offset and diagonal_pieces(q_docs, k_docs):
            return pieces_backward(q, k, v, do, lse, delta, q_docs, scale, out)
        return block_backward_fused(q, k, v, do, lse, delta, out=out, **kw)
    return block_backward_tiled(q, k, v, do, lse, delta, **kw)


def backward_path(q: torch.Tensor) -> str:
    """Which block backward runs: our fused Triton kernels where the forward takes them (CUDA, or
    LONGWEAVE_KERNELS=triton in the interpreter), torch's fused CPU flash backward on CPU, else the
    tiled materialised one (LONGWEAVE_KERNELS=reference, or a GPU without Triton)."""
    mode = kernel_mode()
    if mode == "triton" or (mode == "auto" and triton_ok(q)):
        return "triton"
    if q.device.type == "cpu" and mode != "reference":
        return "cpu_fused"
    return "tiled"


def block_backward_triton(q, k, v, do, lse, delta, *, window, q_docs, k_docs, q_offset: int, k_offset: int,
                          scale: float):
    """block_backward through our fused Triton dq and dk/dv kernels (no score matrix, any mask)."""
    from kernels.attention.triton import attention_triton_backward

    acc = acc_dtype(q.dtype)
    grads = attention_triton_backward(q, k, v, do, lse, delta, causal=True, window=window, q_doc_ids=q_docs,
                                      k_doc_ids=k_docs, q_offset=q_offset, k_offset=k_offset, scale=scale)
    return tuple(g.to(acc) for g in grads)


def diagonal_pieces(q_docs, k_docs) -> bool:
    """A diagonal block of several contiguous documents: its backward runs per document."""
    return (q_docs is not None and (q_docs is k_docs or torch.equal(q_docs, k_docs))
            and not single_document_rows(q_docs) and contiguous_documents(q_docs))


def pieces_backward(q, k, v, do, lse, delta, docs, scale: float, out=None):
    """The diagonal block's backward as per-document causal pieces (kernels/attention/doc_pieces.py
    layout: pieces padded at their end and batched by length), no [n, n] mask. Padded positions
    read a real token's q/k/v/dO (no padded copies of the inputs): their lse is +inf (P = 0, so
    they add nothing to any gradient), causal hides their keys from every real query, and their
    own gradients land on a discarded extra row."""
    acc = acc_dtype(q.dtype)
    b, n, h, d = q.shape
    hkv, pad = k.shape[2], b * n
    qf, kf, vf, dof = (z.reshape(pad, *z.shape[2:]) for z in (q, k, v, do.to(q.dtype)))
    outf = None if out is None else out.to(q.dtype).reshape(pad, h, d)

    def stats(z, fill):                              # [B,H,n] -> [pad+1, H], the extra row = fill
        return torch.cat([z.to(acc).transpose(1, 2).reshape(pad, h), torch.full((1, h), fill, dtype=acc)])
    lsef, deltaf = stats(lse, float("inf")), stats(delta, 0.0)
    grads = [torch.zeros(pad + 1, hh, d, dtype=acc, device=q.device) for hh in (h, hkv, hkv)]
    for length, starts, sizes in buckets(*piece_bounds(docs)):
        pos = torch.arange(length)
        idx = torch.where(pos[None, :] < sizes[:, None], starts[:, None] + pos[None, :], pad).to(q.device)
        src = idx.clamp(max=pad - 1)                 # padded positions read a real token
        got = block_backward_fused(qf[src], kf[src], vf[src], dof[src], lsef[idx].transpose(1, 2),
                                   deltaf[idx].transpose(1, 2), window=None, q_docs=None, k_docs=None,
                                   q_offset=0, k_offset=0, scale=scale, out=None if outf is None else outf[src])
        for g, part in zip(grads, got):
            g.index_add_(0, idx.reshape(-1), part.reshape(-1, *part.shape[2:]))
    dq, dk, dv = (g[:pad].reshape(b, n, *g.shape[1:]) for g in grads)
    return dq, dk, dv


def stand_in_output(do: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """A tensor O' [B,H,n,D] with rowsum(dO ⊙ O') = delta, in dO's dtype.

    The fused backward reads the output only to form delta = rowsum(dO ⊙ O); a helper rank
    holds delta (n numbers per head), not the output (n·D), so this keeps the wire small.
    O' = dO · delta / |dO|² (0 where dO is 0, where delta is 0 too)."""
    acc = acc_dtype(do.dtype)
    d = do.to(acc)
    norm = d.square().sum(-1)
    coef = torch.where(norm > 0, delta.to(acc) / torch.where(norm > 0, norm, 1), 0)
    return (d * coef.unsqueeze(-1)).to(do.dtype)


def block_backward_fused(q, k, v, do, lse, delta, *, window, q_docs, k_docs, q_offset: int, k_offset: int,
                         scale: float, out=None):
    """block_backward through torch's fused CPU flash backward (no score matrix)."""
    acc = acc_dtype(q.dtype)
    (b, n, h, d), (m, hkv) = q.shape, k.shape[1:3]
    kind = mask_kind(n, m, True, window, q_docs, k_docs, q_offset, k_offset)
    bias = None
    if kind == "masked":
        mask = visible_mask(n, m, causal=True, window=window, q_doc_ids=q_docs, k_doc_ids=k_docs,
                            q_offset=q_offset, k_offset=k_offset, device=q.device)
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
    qt, dot = q.transpose(1, 2), do.to(q.dtype).transpose(1, 2)
    kt, vt = k.transpose(1, 2), v.transpose(1, 2)
    if hkv != h:                                   # the CPU kernel has no GQA: expand, then sum back
        kt, vt = kt.repeat_interleave(h // hkv, dim=1), vt.repeat_interleave(h // hkv, dim=1)
    lse_k = lse.to(torch.float64 if q.dtype == torch.float64 else torch.float32)
    lse_k = torch.where(torch.isinf(lse_k), torch.full_like(lse_k, float("inf")), lse_k)  # key-less rows: P = 0
    dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        dot, qt, kt, vt, stand_in_output(dot, delta) if out is None else out.to(q.dtype).transpose(1, 2),
        lse_k.contiguous(), 0.0, kind == "causal",
        attn_mask=bias, scale=scale)
    if hkv != h:
        dk, dv = (g.reshape(b, hkv, h // hkv, m, d).sum(2) for g in (dk, dv))
    return dq.transpose(1, 2).to(acc), dk.transpose(1, 2).to(acc), dv.transpose(1, 2).to(acc)


def block_backward_tiled(q, k, v, do, lse, delta, *, window, q_docs, k_docs, q_offset: int, k_offset: int,
                         scale: float):
    """block_backward with materialised [Q_TILE, keys] scores (any device, float64-exact)."""
    acc = acc_dtype(q.dtype)
    hkv = k.shape[2]
    kf = k.to(acc).permute(0, 2, 1, 3).unsqueeze(2)                  # [B,Hkv,1,m,D]
    vf = v.to(acc).permute(0, 2, 1, 3).unsqueeze(2)
    dk = torch.zeros(kf.shape[0], hkv, kf.shape[3], kf.shape[4], dtype=acc, device=q.device)
    dv = torch.zeros_like(dk)
    dq_tiles = []
    n = q.shape[1]
    for start in range(0, n, Q_TILE):
        stop = min(n, start + Q_TILE)
        qf = _heads_split(q[:, start:stop].to(acc), hkv)                # [B,Hkv,rep,r,D]
        dof = _heads_split(do[:, start:stop].to(acc), hkv)
        rows = stop - start
        # keys this tile can see at all (causal upper bound, window lower bound): skip the rest
        j_hi = max(0, min(kf.shape[3], q_offset + stop - k_offset))
        j_lo = 0 if window is None else max(0, min(j_hi, q_offset + start - window + 1 - k_offset))
        if j_hi == j_lo:
            dq_tiles.append(torch.zeros(q.shape[0], rows, q.shape[2], q.shape[3], dtype=acc, device=q.device))
            continue
        kt, vt = kf[:, :, :, j_lo:j_hi], vf[:, :, :, j_lo:j_hi]
        lse_t = lse[:, :, start:stop].to(acc).reshape(lse.shape[0], hkv, -1, rows, 1)
        delta_t = delta[:, :, start:stop].to(acc).reshape(delta.shape[0], hkv, -1, rows, 1)
        s = torch.matmul(qf, kt.transpose(-1, -2)) * scale             # [B,Hkv,rep,r,keys]
        mask = visible_mask(rows, j_hi - j_lo, causal=True, window=window,
                            q_doc_ids=None if q_docs is None else q_docs[:, start:stop],
                            k_doc_ids=None if k_docs is None else k_docs[:, j_lo:j_hi],
                            q_offset=q_offset + start, k_offset=k_offset + j_lo, device=q.device)
        if mask is not None:
            s = s.masked_fill(~mask.unsqueeze(2), -math.inf)
        safe_lse = torch.where(torch.isinf(lse_t), torch.full_like(lse_t, math.inf), lse_t)
        p = torch.exp(s - safe_lse)                                      # masked or key-less rows -> 0
        dv[:, :, j_lo:j_hi] += torch.matmul(p.transpose(-1, -2), dof).sum(2)
        dp = torch.matmul(dof, vt.transpose(-1, -2))
        ds = p * (dp - delta_t)
        dq_tiles.append(_heads_merge(torch.matmul(ds, kt) * scale))
        dk[:, :, j_lo:j_hi] += torch.matmul(ds.transpose(-1, -2), qf).sum(2) * scale
    dq = torch.cat(dq_tiles, dim=1) if dq_tiles else torch.zeros_like(q, dtype=acc)
    return dq, dk.permute(0, 2, 1, 3), dv.permute(0, 2, 1, 3)


def row_delta(o: torch.Tensor, do: torch.Tensor) -> torch.Tensor:
    """delta [B,H,n] = rowsum(dO ⊙ O), the softmax-backward correction shared by every block."""
    acc = acc_dtype(o.dtype)
    return (o.to(acc) * do.to(acc)).sum(-1).transpose(1, 2).contiguous()
