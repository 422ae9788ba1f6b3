"""Megatron's two conjugate autograd collectives over the tensor-parallel group.

- copy_to_tp: identity forward, all-reduce of the gradient backward. Put where a replicated
  activation enters computation that is split over tp ranks (each rank then back-propagates
  only its share of the input gradient, and the shares must be added).
- reduce_from_tp: all-reduce forward, identity backward. Put where partial sums leave a
  split computation (a row-parallel matmul done by hand).
Both are identities when the group has one rank, so callers need no special case.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def copy_to_tp(x: torch.Tensor, group) -> torch.Tensor:
    if group is None or dist.get_world_size(group) == 1:
        return x
    return _CopyToTP.apply(x, group)


def reduce_from_tp(x: torch.Tensor, group) -> torch.Tensor:
    if group is None or dist.get_world_size(group) == 1:
        return x
    return _ReduceFromTP.apply(x, group)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the group in both directions: each rank's value feeds every rank's result,
    and every rank uses the result differently (e.g. a norm over channels split across ranks)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def all_reduce_sum(x: torch.Tensor, group) -> torch.Tensor:
    return _AllReduceSum.apply(x, group)
