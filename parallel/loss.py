"""The training loss: summed token cross-entropy, vocab-parallel when the logits are a tp shard,
and optionally chunked so that the [B, T, vocab] logits never exist at once.

Summed, not averaged: the engine divides by the global label count of the step (see
parallel/engine.py), so every layout and micro-batch split yields the same mean loss.

Chunked (fused) cross-entropy, train.loss_chunk = C > 0: the model's last hidden states are
cut into pieces of C tokens; each piece goes through the final norm, the head and the loss
under torch.utils.checkpoint (non-reentrant), so only the hidden states are kept for backward
and one piece's logits are alive at a time, forward and backward. The price is the head's
forward matmul run twice (the recomputation): 2·d·V FLOPs per token more. Under tensor
parallelism each piece's logits are the local vocab shard and the loss is the vocab-parallel
one, as in the plain path. `apply_chunked_loss` switches a model to it on the instance (as
activation checkpointing does): while `model.loss_labels` is set, the model's forward returns
the summed loss instead of logits; otherwise (evaluation, generation) it returns logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from data.batch import IGNORE_INDEX


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor, tp_group=None) -> torch.Tensor:
    """Summed cross-entropy over the label tokens (IGNORE_INDEX excluded)."""
    if tp_group is not None:
        from parallel.tensor import vocab_parallel_cross_entropy

        return vocab_parallel_cross_entropy(logits, labels, tp_group)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()            # half-precision logits: the softmax in fp32; float64 stays float64
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_token_loss_sum(h: torch.Tensor, labels: torch.Tensor, logits_of, chunk: int,
                           tp_group=None) -> torch.Tensor:
    """token_loss_sum(logits_of(h), labels) computed `chunk` tokens at a time, each piece's
    logits recomputed in backward. h [B, T, d], labels [B, T]; logits_of maps [1, n, d] to
    [1, n, V(/tp)]."""
    def piece(hc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
        return token_loss_sum(logits_of(hc[None]), yc[None], tp_group)

    total = h.new_zeros((), dtype=torch.float64 if h.dtype == torch.float64 else torch.float32)
    for hc, yc in zip(h.flatten(0, 1).split(chunk), labels.flatten().split(chunk)):
        total = total + checkpoint(piece, hc, yc, use_reentrant=False)
    return total


def apply_chunked_loss(model: nn.Module, chunk: int, tp_group=None) -> nn.Module:
    """Make `model` (a LanguageModel) return its summed loss, chunked, while model.loss_labels
    is set; its output_logits is replaced on the instance, so parameter names do not change."""
    logits_of = model.output_logits

    def output_logits(h: torch.Tensor, _model=model):
        labels = getattr(_model, "loss_labels", None)
        if labels is None:
            return logits_of(h)
        return chunked_token_loss_sum(h, labels, logits_of, chunk, tp_group)

    model.output_logits = output_logits
    model.loss_labels = None
    return model
