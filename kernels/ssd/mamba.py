"""mamba-ssm's fused SSD (`mamba_chunk_scan_combined`) behind our `ssd` contract.

Why: on an H100 mamba-ssm's kernels beat ours from about 19K tokens × 32 heads up (measured in
benchmarks/RESULTS.md: ours 2.72× faster at 4K, 1.08× at 16K, 0.40× at 64K), so the dispatcher
hands long sequences to it when it is installed. Its kernels are pure Triton, so a wheel built
with MAMBA_SKIP_CUDA_BUILD=TRUE serves; that build lacks the CUDA extension that
`mamba_ssm/__init__.py` imports, so `load_chunk_scan` then imports the ops subpackage alone.

Contract mapping: our document segments (kernels/segments.py: 0 at token 0, +1 at every
boundary) are exactly mamba-ssm's `seq_idx`: the state resets where seq_idx changes and the
initial state seeds segment 0 only, as in kernels/ssd/reference.py. dt is already positive
unless dt_bias / dt_softplus say otherwise (kernels/ssd/gating.py, here done by mamba-ssm's own
kernels, as is z gating); D is per head; the final state comes back in fp32.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types

import torch

from kernels.segments import segment_ids

# mamba-ssm's own default and the chunk it was timed with; the result does not depend on it.
MAMBA_CHUNK = 256
# Smallest batch·tokens·heads for which `ssd` prefers mamba-ssm in auto mode. From the H100 table
# (B=1, H=32, P=64, N=128, bf16): ours ≈ 0.233 ms per 1K tokens, mamba-ssm ≈ 3.79 ms + 0.035 ms
# per 1K tokens, crossing near 19K tokens × 32 heads; 24K × 32 leaves a margin for our side.
MAMBA_MIN_TOKEN_HEADS = 24 * 1024 * 32


@functools.lru_cache(maxsize=1)
def load_chunk_scan():
    """mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined, or None if mamba-ssm is absent."""
    if importlib.util.find_spec("mamba_ssm") is None:
        return None
    try:
        module = importlib.import_module("mamba_ssm.ops.triton.ssd_combined")
    except ImportError:
        # A CUDA-less build: mamba_ssm/__init__ imports selective_scan_cuda and fails. Stand in an
        # empty package with the same search path so only the Triton ops get imported.
        for name in [n for n in sys.modules if n == "mamba_ssm" or n.startswith("mamba_ssm.")]:
            del sys.modules[name]
        spec = importlib.util.find_spec("mamba_ssm")
        pkg = types.ModuleType("mamba_ssm")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["mamba_ssm"] = pkg
        try:
            module = importlib.import_module("mamba_ssm.ops.triton.ssd_combined")
        except ImportError:
            del sys.modules["mamba_ssm"]
            return None
    return module.mamba_chunk_scan_combined


def mamba_supports(x: torch.Tensor) -> bool:
    """Inputs mamba-ssm's kernels take: CUDA tensors in fp32/bf16/fp16 (float64 stays ours)."""
    return x.is_cuda and x.dtype in (torch.float32, torch.bfloat16, torch.float16)


def mamba_pays_off(x: torch.Tensor) -> bool:
    """True when x [b, t, h, p] is long enough that mamba-ssm was measured faster than ours."""
    b, t, h = x.shape[:3]
    return b * t * h >= MAMBA_MIN_TOKEN_HEADS


def ssd_mamba(
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
    chunk_size: int = MAMBA_CHUNK,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
):
    """y [b,t,h,p] in x.dtype (and the final state [b,h,p,n] fp32) through mamba-ssm, whose chunk
    is chunk_size rounded up to a power of two ≥ 16 (the dispatcher keeps MAMBA_CHUNK; the
    result does not depend on it, tests use small chunks to cross chunk boundaries)."""
    fn = load_chunk_scan()
    if fn is None:
        raise RuntimeError("ssd: mamba-ssm is not importable; install it (pip install longweave[gpu]) "
                           "or set LONGWEAVE_KERNELS=triton")
    b, t, h, p = x.shape
    if t == 0:   # mamba-ssm's kernels need at least one token
        y = x.new_zeros(b, 0, h, p)
        final = (initial_state.float() if initial_state is not None
                 else torch.zeros(b, h, p, B.shape[3], device=x.device, dtype=torch.float32))
        return (y, final) if return_final_state else y
    chunk = 1 << (max(16, chunk_size) - 1).bit_length()
    seq_idx = segment_ids(doc_ids).to(torch.int32).contiguous() if doc_ids is not None else None
    y, final = fn(x.contiguous(), dt.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(), chunk,
                  D=D.contiguous() if D is not None else None,
                  initial_states=initial_state.contiguous() if initial_state is not None else None,
                  seq_idx=seq_idx, return_final_states=True, z=z.contiguous() if z is not None else None,
                  dt_bias=dt_bias.contiguous() if dt_bias is not None else None, dt_softplus=dt_softplus)
    final = final.float()
    return (y, final) if return_final_state else y
