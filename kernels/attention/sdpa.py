"""Fast attention through PyTorch's fused SDPA kernels.

On CPU this calls the flash-attention CPU kernel directly because it also returns the
log-sum-exp (which the sequence-parallel merge needs) and runs forward and backward without
materialising the score matrix. The mask takes the cheapest exact form (masks.mask_kind): none
for a block whose keys are all visible (whatever its offsets), the kernel's causal flag for the
plain triangle, and an additive bias only for partially masked blocks (windows, documents).
On CUDA, `F.scaled_dot_product_attention` serves calls that need no LSE; calls that need the LSE go to the Triton kernel or flash-attn (see kernels.attention).

The returned LSE is differentiable (CpuFlash): aten's CPU flash op marks it non-differentiable,
so a loss through the LSE would silently get no gradient. d lse_i / d s_ij = P_ij, so the LSE's
gradient g is one more fused backward with V = 0 and a stand-in output whose row sum with dO' = 1
is −g: dS = P ⊙ (0 − (−g)) = P ⊙ g, dQ = scale·dS K, dK = scale·dSᵀ Q.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.attention.masks import mask_kind, visible_mask


def attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    window: int | None = None,
    q_doc_ids: torch.Tensor | None = None,
    k_doc_ids: torch.Tensor | None = None,
    q_offset: int = 0,
    k_offset: int = 0,
    scale: float | None = None,
    return_lse: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    tq, h = q.shape[1], q.shape[2]
    tk, hkv = k.shape[1], k.shape[2]
    kind = mask_kind(tq, tk, causal, window, q_doc_ids, k_doc_ids, q_offset, k_offset)
    plain = kind == "causal"
    mask = None if kind != "masked" else visible_mask(
        tq, tk, causal=causal, window=window, q_doc_ids=q_doc_ids, k_doc_ids=k_doc_ids,
        q_offset=q_offset, k_offset=k_offset, device=q.device,
    )
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if q.device.type != "cpu":
        o = F.scaled_dot_product_attention(
            qt, kt, vt, attn_mask=mask, is_causal=plain, scale=scale, enable_gqa=hkv != h
        )
        return o.transpose(1, 2), None
    if hkv != h:  # the CPU flash kernel has no GQA: expand (views on CPU are cheap relative to compute)
        kt = kt.repeat_interleave(h // hkv, dim=1)
        vt = vt.repeat_interleave(h // hkv, dim=1)
    bias = None
    if mask is not None:
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
    o, lse = CpuFlash.apply(qt, kt, vt, bias, plain, scale)
    if mask is not None:  # rows that see no key: the kernel leaves lse at 0, the contract says -inf
        lse = lse.masked_fill(~mask.any(-1), float("-inf"))
    return o.transpose(1, 2), lse


class CpuFlash(torch.autograd.Function):
    """torch's fused CPU flash attention, (o, lse) both differentiable (q, k, v: [B, H, T, D])."""

    @staticmethod
    def forward(ctx, q, k, v, bias, causal: bool, scale):
        o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, causal, attn_mask=bias, scale=scale)
        ctx.save_for_backward(q, k, v, o, lse, bias)
        ctx.causal, ctx.scale = causal, scale
        return o, lse

    @staticmethod
    def backward(ctx, do, dlse):
        q, k, v, o, lse, bias = ctx.saved_tensors
        grads = [torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)]

        def fused(d_out, values, out):
            return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                d_out.contiguous(), q, k, values, out.contiguous(), lse, 0.0, ctx.causal,
                attn_mask=bias, scale=ctx.scale)
        if do is not None:
            grads = list(fused(do, v, o))
        if dlse is not None and bool(dlse.ne(0).any()):
            ones = torch.ones_like(q)
            stand_in = (-dlse.to(q.dtype) / q.shape[-1]).unsqueeze(-1).expand_as(q)
            dq_l, dk_l, _ = fused(ones, torch.zeros_like(v), stand_in)
            grads[0], grads[1] = grads[0] + dq_l, grads[1] + dk_l
        return grads[0], grads[1], grads[2], None, None, None
