"""Activation checkpointing, rematerialization-aware (LightSeq): recompute each block in the
backward pass, but never its distributed attention or other communication.

Each Block's forward is replaced, on the instance, by one that runs the original under
torch.utils.checkpoint (non-reentrant, so the MixerContext passes through untouched).
Nothing is wrapped, so parameter names, and hence checkpoints, are the same with or without
it. Memory per layer drops to the block input.

Under sequence parallelism (ctx.sp set) the checkpoint boundary sits at the attention output:
the first forward runs under `sp.recording(store)`, which keeps DistAttn's output and LSE
(and the halos / gathered recurrent states) in a per-block store; the recomputation runs under
`sp.replaying(store)`, so it reruns the projections, norms and MLP locally and rebuilds the
DistAttn autograd node from the stored output and LSE. Distributed attention thus runs exactly
once forward and once backward per layer and step, at the price of keeping o [T/P, d] and the
LSE per attention layer (the same tensors a non-checkpointed run keeps for backward anyway).

Selective checkpointing (policy "selective", as torchtitan's per-op SAC): the same per-block
checkpoint, with torch.utils.checkpoint's selective contexts deciding per op: the outputs of
matmuls (every linear, the SSD's batched products) and of the attention kernels are saved,
everything else (norms, activations, RoPE, gates, elementwise math) is recomputed. It keeps the
expensive half of a block and drops the bulky cheap half; ops outside aten (our Triton
kernels' autograd functions) are recomputed like any elementwise op.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

POLICIES = ("full", "selective")
aten = torch.ops.aten
SAVED_OPS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
             aten._scaled_dot_product_flash_attention.default,
             aten._scaled_dot_product_efficient_attention.default,
             aten._scaled_dot_product_cudnn_attention.default,
             aten._scaled_dot_product_flash_attention_for_cpu.default}


def keep_matmuls(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """The selective policy: save matmul and attention outputs, recompute the rest."""
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


@contextmanager
def _both(first, second):
    with first, second:
        yield


def remat_contexts(sp):
    """(forward context, recompute context) for one checkpointed call; no-ops without SP hooks."""
    if sp is None or not hasattr(sp, "recording"):
        return nullcontext(), nullcontext()
    store: list = []
    return sp.recording(store), sp.replaying(store)


def block_contexts(sp, policy: str):
    """The (forward, recompute) contexts of one checkpointed block call under `policy`."""
    sp_fwd, sp_rec = remat_contexts(sp)
    if policy == "full":
        return sp_fwd, sp_rec
    sac_fwd, sac_rec = create_selective_checkpoint_contexts(keep_matmuls)
    return _both(sp_fwd, sac_fwd), _both(sp_rec, sac_rec)


def apply_activation_checkpointing(model: nn.Module, policy: str = "full") -> nn.Module:
    """Checkpoint every block of `model` under `policy` ("full" or "selective"), in place."""
    if policy not in POLICIES:
        raise ValueError(f"activation checkpointing policy {policy!r} is not one of {', '.join(POLICIES)}")
    for block in model.layers:
        if getattr(block, "activation_checkpointed", False):
            continue
        original = block.forward

        def forward(x, ctx, _original=original):
            return checkpoint(_original, x, ctx, use_reentrant=False,
                              context_fn=lambda: block_contexts(getattr(ctx, "sp", None), policy))

        block.forward = forward
        block.activation_checkpointed = True
    return model
