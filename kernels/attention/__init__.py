"""Attention with optional log-sum-exp, for every mixer and the sequence-parallel code.

`attention(q, k, v, ...)` takes q [B, Tq, H, D], k/v [B, Tk, Hkv, D] (GQA/MQA un-expanded),
honours causal masking, a sliding window and document boundaries (doc_ids), and global
query/key offsets (for blocks of a sequence split across ranks). See masks.py for the exact
visibility rule. Paths: reference (materialised scores), torch SDPA, flash-attn varlen, and our
fused Triton kernel (triton.py, imported lazily so TRITON_INTERPRET can be set first).
On the SDPA path, packed-document self-attention never builds a [T, T] mask: a row that is one
document runs as plain causal attention, and rows of several documents run as per-document
causal pieces (doc_pieces.py).
"""
from __future__ import annotations

import torch

from kernels.attention.doc_pieces import (
    contiguous_documents,
    piece_attention,
    piece_bounds,
    single_document_rows,
)
from kernels.attention.flash_varlen import attention_flash_varlen
from kernels.attention.flash_varlen import supports as flash_supports
from kernels.attention.masks import is_plain_causal, visible_mask
from kernels.attention.reference import attention_reference
from kernels.attention.sdpa import attention_sdpa
from kernels.dispatch import has_module, kernel_mode

TRITON_AVAILABLE = has_module("triton")
TRITON_HEAD_DIMS = (16, 32, 64, 128, 256)  # kept in step with kernels/attention/triton.py (imported lazily)

__all__ = ["attention", "attention_reference", "attention_sdpa", "visible_mask", "select_attention_path", "triton_ok"]


def triton_ok(q: torch.Tensor) -> bool:
    """Our Triton kernel can take q on a CUDA device (head dim 16..256, power of two)."""
    return (q.is_cuda and TRITON_AVAILABLE and q.shape[-1] in TRITON_HEAD_DIMS
            and q.dtype in (torch.float16, torch.bfloat16, torch.float32))


def select_attention_path(q: torch.Tensor, tk: int, q_offset: int, k_offset: int, return_lse: bool,
                          plain_causal: bool = False) -> str:
    """Name of the path `attention` will take for these inputs.

    auto: flash-attn (packed self-attention) > our Triton kernel on CUDA whenever the LSE or a
    mask other than the plain causal triangle is needed (SDPA exposes no LSE on CUDA and turns
    masks into a materialised [T, T] bias) > SDPA. LONGWEAVE_KERNELS=triton forces Triton
    (CUDA, or the CPU interpreter with TRITON_INTERPRET=1)."""
    mode = kernel_mode()
    if mode == "reference":
        return "reference"
    if mode == "triton":
        return "triton"
    if mode == "auto" and flash_supports(q, q.shape[1], tk, q_offset, k_offset):
        return "flash_attn"
    if mode == "auto" and triton_ok(q) and (return_lse or not plain_causal):
        return "triton"
    if q.device.type != "cpu" and return_lse:
        return "reference"  # SDPA on CUDA does not expose the LSE and Triton is unavailable or not forced
    return "sdpa"


def _attention_triton(q, k, v, **kwargs):
    from kernels.attention.triton import attention_triton

    return attention_triton(q, k, v, **kwargs)


def _documents_route(q, k_doc_ids, q_doc_ids, causal, window, q_offset, k_offset) -> str | None:
    """How the SDPA path serves packed-document self-attention: "single" (every row one document:
    drop the ids), "pieces" (per-document causal pieces, no mask) or None (the masked kernel)."""
    self_attention = (causal and q.shape[1] == k_doc_ids.shape[1] and q_offset == k_offset
                      and (k_doc_ids is q_doc_ids or torch.equal(k_doc_ids, q_doc_ids)))
    if not self_attention:
        return None
    if single_document_rows(q_doc_ids):
        return "single"
    if not contiguous_documents(q_doc_ids):
        return None
    if window is not None and int(piece_bounds(q_doc_ids)[1].max()) > window:
        return None                                    # the window cuts inside a document: masked
    return "pieces"


def attention(
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
    return_lse: bool = False,
):
    """Output [B, Tq, H, D], and the LSE [B, H, Tq] (fp32) when return_lse."""
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads {q.shape[2]} must be a multiple of kv heads {k.shape[2]}")
    plain = is_plain_causal(q.shape[1], k.shape[1], causal, window, q_doc_ids, q_offset, k_offset)
    path = select_attention_path(q, k.shape[1], q_offset, k_offset, return_lse, plain_causal=plain)
    fn = {"reference": attention_reference, "flash_attn": attention_flash_varlen, "sdpa": attention_sdpa,
          "triton": _attention_triton}[path]
    kwargs = dict(causal=causal, window=window, q_doc_ids=q_doc_ids, k_doc_ids=k_doc_ids,
                  q_offset=q_offset, k_offset=k_offset, scale=scale)
    if fn is attention_sdpa and q_doc_ids is not None:
        documents = _documents_route(q, k_doc_ids, q_doc_ids, causal, window, q_offset, k_offset)
        if documents == "single":
            kwargs.update(q_doc_ids=None, k_doc_ids=None)
        elif documents == "pieces":
            def causal_fn(qb, kb, vb):
                return attention_sdpa(qb, kb, vb, causal=True, scale=scale, return_lse=return_lse)
            o, lse = piece_attention(q, k, v, q_doc_ids, causal_fn, return_lse)
            return (o, lse) if return_lse else o
    if fn is attention_reference:
        o, lse = fn(q, k, v, **kwargs)
    else:
        o, lse = fn(q, k, v, return_lse=return_lse, **kwargs)
    return (o, lse) if return_lse else o
