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
"""
from __future__ import annotations

from contextlib import nullcontext

from torch import nn
from torch.utils.checkpoint import checkpoint


def remat_contexts(sp):
    """(forward context, recompute context) for one checkpointed call; no-ops without SP hooks."""
    if sp is None or not hasattr(sp, "recording"):
        return nullcontext(), nullcontext()
    store: list = []
    return sp.recording(store), sp.replaying(store)


def apply_activation_checkpointing(model: nn.Module) -> nn.Module:
    for block in model.layers:
        if getattr(block, "activation_checkpointed", False):
            continue
        original = block.forward

        def forward(x, ctx, _original=original):
            return checkpoint(_original, x, ctx, use_reentrant=False,
                              context_fn=lambda: remat_contexts(getattr(ctx, "sp", None)))

        block.forward = forward
        block.activation_checkpointed = True
    return model
