"""Vocab-parallel cross-entropy (Megatron): logits stay split over the vocabulary.

Each tp rank holds logits for vocabulary rows [start, start + V/tp). The loss needs only
three all-reduces of [N]-sized tensors (max, sum of exponentials, target logit) instead of
gathering [N, V] logits, and the gradient (softmax − one-hot) is computed locally.
Returns the *sum* over non-ignored tokens, like F.cross_entropy(reduction="sum").
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from data.batch import IGNORE_INDEX


class _VocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, vocab_start, group):
        logits = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
        local_v = logits.shape[-1]
        row_max = logits.max(dim=-1).values
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        shifted = logits - row_max.unsqueeze(-1)
        exp = shifted.exp()
        sum_exp = exp.sum(dim=-1)
        dist.all_reduce(sum_exp, group=group)
        valid = labels != IGNORE_INDEX
        local = labels - vocab_start
        mine = valid & (local >= 0) & (local < local_v)
        idx = local.clamp(0, local_v - 1)
        target = shifted.gather(-1, idx.unsqueeze(-1)).squeeze(-1) * mine
        dist.all_reduce(target, group=group)
        loss = (sum_exp.log() - target) * valid
        ctx.save_for_backward(exp, sum_exp, idx, mine, valid)
        return loss.sum()

    @staticmethod
    def backward(ctx, grad):
        exp, sum_exp, idx, mine, valid = ctx.saved_tensors
        g = exp / sum_exp.unsqueeze(-1)
        g.scatter_add_(-1, idx.unsqueeze(-1), -mine.to(g.dtype).unsqueeze(-1))
        g = g * (valid.to(g.dtype) * grad).unsqueeze(-1)
        return g, None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, group) -> torch.Tensor:
    """Summed cross-entropy of local vocab-shard logits [..., V/tp] against global labels [...]."""
    rank = dist.get_rank(group)
    start = rank * logits.shape[-1]
    return _VocabParallelCE.apply(logits.flatten(0, -2), labels.flatten(), start, group)
