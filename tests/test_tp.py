"""Tensor-parallel building blocks in float64: the vocab-parallel cross-entropy and the
Megatron collectives equal their single-process definitions, forward and gradients."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from data.batch import IGNORE_INDEX


def _vocab_ce(rank, world, logits, labels):
    import torch.distributed as dist

    from parallel.tensor import vocab_parallel_cross_entropy

    group = dist.group.WORLD
    shard = logits.chunk(world, dim=-1)[rank].clone().requires_grad_(True)
    loss = vocab_parallel_cross_entropy(shard, labels, group)
    (loss * 0.5).backward()
    return loss.item(), shard.grad


def test_vocab_parallel_cross_entropy_matches_full(pool2):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 12, dtype=torch.float64) * 3
    labels = torch.randint(0, 12, (3, 5))
    labels[0, :2] = IGNORE_INDEX
    full = logits.clone().requires_grad_(True)
    ref = F.cross_entropy(full.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    (ref * 0.5).backward()
    out = pool2.run(_vocab_ce, logits, labels)
    for rank, (loss, grad) in enumerate(out):
        assert abs(loss - ref.item()) < 1e-10
        expect = full.grad.chunk(2, dim=-1)[rank]
        torch.testing.assert_close(grad, expect, atol=1e-12, rtol=1e-10)


def _collectives(rank, world, x):
    import torch.distributed as dist

    from parallel.tensor.collectives import all_reduce_sum, copy_to_tp, reduce_from_tp

    group = dist.group.WORLD
    a = x.clone().requires_grad_(True)
    (copy_to_tp(a, group) * (rank + 1)).sum().backward()          # grad summed over ranks: 1 + 2
    b = x.clone().requires_grad_(True)
    y = reduce_from_tp(b * (rank + 1), group)                      # forward sum: 3x, backward identity
    y.sum().backward()
    c = x.clone().requires_grad_(True)
    (all_reduce_sum(c * (rank + 1), group) * (rank + 1)).sum().backward()
    return a.grad, y.detach(), b.grad, c.grad


def test_megatron_collectives(pool2):
    x = torch.randn(4, dtype=torch.float64)
    out = pool2.run(_collectives, x)
    for rank, (ga, y, gb, gc) in enumerate(out):
        torch.testing.assert_close(ga, torch.full_like(x, 3.0))
        torch.testing.assert_close(y, 3 * x)
        torch.testing.assert_close(gb, torch.full_like(x, float(rank + 1)))
        # d/dc_r of sum_k (k+1)·sum_j (j+1)c_j = (r+1)·(1+2)
        torch.testing.assert_close(gc, torch.full_like(x, 3.0 * (rank + 1)))
