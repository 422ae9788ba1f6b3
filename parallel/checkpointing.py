"""Activation checkpointing: recompute each block's activations in the backward pass.

Each Block's forward is replaced, on the instance, by one that runs the original under
torch.utils.checkpoint (non-reentrant, so the MixerContext passes through untouched).
Nothing is wrapped, so parameter names, and hence checkpoints, are the same with or without
it. Memory per layer drops to the block input; compute grows by one extra forward.
"""
from __future__ import annotations

from torch import nn
from torch.utils.checkpoint import checkpoint


def apply_activation_checkpointing(model: nn.Module) -> nn.Module:
    for block in model.layers:
        if getattr(block, "activation_checkpointed", False):
            continue
        original = block.forward

        def forward(x, ctx, _original=original):
            return checkpoint(_original, x, ctx, use_reentrant=False)

        block.forward = forward
        block.activation_checkpointed = True
    return model
