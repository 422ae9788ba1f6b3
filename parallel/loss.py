"""The training loss: summed token cross-entropy, vocab-parallel when the logits are a tp shard.

Summed, not averaged: the engine divides by the global label count of the step (see
parallel/engine.py), so every layout and micro-batch split yields the same mean loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from data.batch import IGNORE_INDEX


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor, tp_group=None) -> torch.Tensor:
    """Summed cross-entropy over the label tokens (IGNORE_INDEX excluded)."""
    if tp_group is not None:
        from parallel.tensor import vocab_parallel_cross_entropy

        return vocab_parallel_cross_entropy(logits, labels, tp_group)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()            # half-precision logits: the softmax in fp32; float64 stays float64
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
