"""Our fused Triton attention (forward + backward, LSE out) behind `attention_triton`.

Why our own kernel next to SDPA and flash-attn: the sequence-parallel merge needs the LSE and
its gradient on CUDA, on blocks of (local queries x remote keys) with global position offsets,
with sliding windows and document masks — none of which SDPA exposes and flash-attn only
partly covers. Triton is imported here (lazily, by kernels.attention's dispatcher) so that
TRITON_INTERPRET=1 can run the same kernels on a CPU for the tests.
"""
from __future__ import annotations

import math
import os

import torch

from kernels.dispatch import empty_output

LOG2E = 1.4426950408889634
HEAD_DIMS = (16, 32, 64, 128, 256)


def supports(q: torch.Tensor, k: torch.Tensor) -> bool:
    """True when the kernels handle these inputs (head dim a power of two in 16..256)."""
    return q.shape[-1] in HEAD_DIMS and k.shape[-1] == q.shape[-1]


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _gpu_configs(kind: str, d: int, fp32: bool):
    """A few block shapes per kernel for Hopper/Ampere; autotuned on first call per shape class."""
    import triton

    if fp32:  # fp32 tiles take twice the shared memory: small blocks only (fp32 is for checks, not speed)
        shapes = [(64, 32, 4, 2), (32, 32, 4, 2)]
    elif kind == "fwd":
        shapes = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 4)]
    elif kind == "dq":
        shapes = [(128, 64, 8, 2), (64, 64, 4, 3), (128, 32, 4, 3)]
    else:
        shapes = [(64, 128, 8, 2), (64, 64, 4, 3), (32, 128, 4, 3)]
    if d > 128:
        shapes = [(64, 32, 4, 2), (32, 32, 4, 2)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]


_KERNELS: dict[tuple, object] = {}


def _kernel(kind: str, d: int, fp32: bool = False):
    """The jit kernel, wrapped in triton.autotune on a real GPU (never in the interpreter)."""
    key = (kind, d > 128, fp32)
    if key not in _KERNELS:
        from kernels.attention import triton_bwd_kernels as bk
        from kernels.attention import triton_kernels as fk

        base = {"fwd": fk.attn_fwd_kernel, "dq": bk.attn_bwd_dq_kernel, "dkdv": bk.attn_bwd_dkdv_kernel}[kind]
        if not _interpreted():
            import triton

            configs = _gpu_configs(kind, d, fp32)
            if os.environ.get("LONGWEAVE_AUTOTUNE", "1") == "0":  # one compile per variant (tests, CI)
                configs = configs[:1]
            base = triton.autotune(configs, key=["TQ", "TK", "HEAD_DIM", "CAUSAL", "HAS_WINDOW",
                                                                 "HAS_DOC", "REP"])(base)
        _KERNELS[key] = base
    return _KERNELS[key]


def _blocks(interp_m: int = 16, interp_n: int = 16) -> dict:
    return {"BLOCK_M": interp_m, "BLOCK_N": interp_n} if _interpreted() else {}


def _grid(n: int, which: str, heads: int, batch: int):
    return lambda meta: ((n + meta[which] - 1) // meta[which], batch * heads)


def _flags(q, causal, window, q_doc_ids):
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    if q.dtype == torch.bfloat16 and _interpreted():
        prec = "upcast"
    return dict(CAUSAL=bool(causal), HAS_WINDOW=window is not None, HAS_DOC=q_doc_ids is not None, DOT_PREC=prec)


def _fwd(q, k, v, q_doc, k_doc, causal, window, shift, scale):
    b, tq, h, d = q.shape
    tk, hkv = k.shape[1], k.shape[2]
    o = empty_output(None, dtype=None, device=None, like=q)
    lse = empty_output((b, h, tq), dtype=torch.float32, device=q.device)
    qd = q_doc if q_doc is not None else lse
    kd = k_doc if k_doc is not None else lse
    _kernel("fwd", d, q.dtype == torch.float32)[_grid(tq, "BLOCK_M", h, b)](
        q, k, v, o, lse, qd, kd, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
        qd.stride(0), kd.stride(0), h, h // hkv, tq, tk, shift, window or 0, scale * LOG2E,
        HEAD_DIM=d, **_flags(q, causal, window, q_doc), **_blocks(),
    )
    return o, lse


def _bwd(do, q, k, v, o, lse, dlse, q_doc, k_doc, causal, window, shift, scale):
    delta = (o.float() * do.float()).sum(-1).transpose(1, 2)  # [B, H, Tq]
    if dlse is not None:
        delta = delta - dlse.float()
    return _bwd_from_stats(do, q, k, v, lse, delta.contiguous(), q_doc, k_doc, causal, window, shift, scale)


def _bwd_from_stats(do, q, k, v, lse, delta, q_doc, k_doc, causal, window, shift, scale):
    """dq, dk, dv from the row statistics alone: lse and delta = rowsum(dO ⊙ O) [B, H, Tq] fp32."""
    b, tq, h, d = q.shape
    tk, hkv = k.shape[1], k.shape[2]
    dq = empty_output(None, dtype=None, device=None, like=q)
    dk = empty_output(None, dtype=None, device=None, like=k)
    dv = empty_output(None, dtype=None, device=None, like=v)
    qd = q_doc if q_doc is not None else lse
    kd = k_doc if k_doc is not None else lse
    flags = _flags(q, causal, window, q_doc)
    _kernel("dq", d, q.dtype == torch.float32)[_grid(tq, "BLOCK_M", h, b)](
        q, k, v, do, dq, lse, delta, qd, kd, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        *do.stride()[:3], *dq.stride()[:3], qd.stride(0), kd.stride(0), h, h // hkv, tq, tk, shift,
        window or 0, scale * LOG2E, scale, HEAD_DIM=d, **flags, **_blocks(),
    )
    _kernel("dkdv", d, q.dtype == torch.float32)[_grid(tk, "BLOCK_N", hkv, b)](
        q, k, v, do, dk, dv, lse, delta, qd, kd, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        *do.stride()[:3], *dk.stride()[:3], *dv.stride()[:3], qd.stride(0), kd.stride(0), h, hkv, h // hkv,
        tq, tk, shift, window or 0, scale * LOG2E, scale, HEAD_DIM=d, **flags, **_blocks(),
    )
    return dq, dk, dv


class _TritonAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, q_doc, k_doc, causal, window, shift, scale):
        o, lse = _fwd(q, k, v, q_doc, k_doc, causal, window, shift, scale)
        ctx.save_for_backward(q, k, v, o, lse, q_doc, k_doc)
        ctx.args = (causal, window, shift, scale)
        return o, lse

    @staticmethod
    def backward(ctx, do, dlse):
        q, k, v, o, lse, q_doc, k_doc = ctx.saved_tensors
        do = do.contiguous() if do.stride(-1) != 1 else do
        dq, dk, dv = _bwd(do, q, k, v, o, lse, dlse, q_doc, k_doc, *ctx.args)
        return dq, dk, dv, None, None, None, None, None, None


def _unit_stride(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _kernel_inputs(tensors, q_doc_ids, k_doc_ids, scale):
    """What the forward and the block backward check and convert alike: both document-id tensors
    or neither, a head dim the kernels take, a CPU only under the interpreter; the tensors (q, k, v
    and dO) in q's dtype with unit last stride, float64 run in float32 (Triton's dot has no float64
    path on GPUs); int32 document ids; the default scale 1/√D."""
    q, k = tensors[0], tensors[1]
    if (q_doc_ids is None) != (k_doc_ids is None):
        raise ValueError("pass both q_doc_ids and k_doc_ids, or neither")
    if not supports(q, k):
        raise ValueError(f"Triton attention needs a head dim in {HEAD_DIMS}, got {q.shape[-1]}")
    if q.device.type == "cpu" and not _interpreted():
        raise RuntimeError("Triton attention on CPU needs TRITON_INTERPRET=1 (or run on a CUDA device)")
    dtype = torch.float32 if q.dtype == torch.float64 else q.dtype
    tensors = tuple(_unit_stride(t.to(dtype)) for t in tensors)
    if q_doc_ids is not None:
        q_doc_ids, k_doc_ids = (ids.to(torch.int32).contiguous() for ids in (q_doc_ids, k_doc_ids))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return tensors, q_doc_ids, k_doc_ids, scale


def attention_triton(
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output [B, Tq, H, D] in q's dtype and LSE [B, H, Tq] fp32; both differentiable.

    float64 inputs run in float32 (Triton's dot has no float64 path on GPUs) and come back
    as float64."""
    in_dtype = q.dtype
    (q, k, v), q_doc_ids, k_doc_ids, scale = _kernel_inputs((q, k, v), q_doc_ids, k_doc_ids, scale)
    win = None if window is None else int(window)
    o, lse = _TritonAttention.apply(q, k, v, q_doc_ids, k_doc_ids, bool(causal), win,
                                    int(q_offset) - int(k_offset), scale)
    if in_dtype == torch.float64:
        o, lse = o.double(), lse.double()
    return o, lse


def attention_triton_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    do: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    *,
    causal: bool = True,
    window: int | None = None,
    q_doc_ids: torch.Tensor | None = None,
    k_doc_ids: torch.Tensor | None = None,
    q_offset: int = 0,
    k_offset: int = 0,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv of one (query block x key block) from the forward's *final* row statistics.

    Sequence parallelism's block backward: lse [B, H, Tq] is the merged log-sum-exp over every key
    block and delta [B, H, Tq] = rowsum(dO ⊙ O) of the final output, so no block needs the others
    (P = exp(S − lse)). Rows whose lse is −inf saw no key anywhere: their P is 0. Gradients come
    back in q's dtype (float64 inputs run in float32, as the forward does)."""
    in_dtype = q.dtype
    (q, k, v, do), q_doc_ids, k_doc_ids, scale = _kernel_inputs((q, k, v, do), q_doc_ids, k_doc_ids, scale)
    lse = lse.float()
    lse = torch.where(torch.isneginf(lse), torch.full_like(lse, float("inf")), lse).contiguous()
    grads = _bwd_from_stats(do, q, k, v, lse, delta.float().contiguous(), q_doc_ids, k_doc_ids, bool(causal),
                            None if window is None else int(window), int(q_offset) - int(k_offset), scale)
    return tuple(g.to(in_dtype) for g in grads)
