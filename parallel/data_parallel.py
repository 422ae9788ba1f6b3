"""Data parallelism over the dp × sp group: DDP, FSDP2, or a plain gradient all-reduce.

- DDP (torch) when the model is whole on every rank (tp = pp = 1): bucketed all-reduce
  overlapped with the backward pass.
- GradientAllReduce when tensor or pipeline parallelism has split the model: DDP does not
  take DTensor parameters or pipeline stages, so after the backward passes each rank
  all-reduces the *local* gradient shards of its own parameters over dp × sp (flattened
  into one buffer per dtype, so one collective per step), then divides by the group size
  (the same averaging DDP does; train/step.py scales the loss for it).
- FSDP2 (`fully_shard`) per block, then on the root: parameters, gradients and optimizer
  states are sharded over dp × sp; bf16 compute with fp32 reduction on GPU. With tp > 1
  the parameters are already tp DTensors and FSDP2 shards them over the dp × sp mesh
  dimension as a 2-D (dp_sp, tp) layout.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.distributed.tensor import DTensor


def local_grad(p: nn.Parameter) -> torch.Tensor | None:
    """The local shard of p's gradient, laid out like p itself (see align_grads)."""
    g = p.grad
    if g is None:
        return None
    if isinstance(g, DTensor) and tuple(g.placements) != tuple(p.placements):
        g = p.grad = g.redistribute(placements=p.placements)
    return g._local_tensor if isinstance(g, DTensor) else g


def align_grads(params: list[nn.Parameter]):
    """A grad sync that lays DTensor gradients out like their parameters.

    A vocab-parallel embedding's weight gradient comes back Replicate (DTensor's embedding
    backward) although the weight is Shard(0); slicing it to the parameter's layout (no
    communication) keeps the optimizer, gradient all-reduces and tied-weight sums on shards.
    """
    def align() -> None:
        for p in params:
            local_grad(p)
    return align


class GradientAllReduce:
    """Average the gradients of `params` over `group` after the backward passes."""

    def __init__(self, params: list[nn.Parameter], group):
        self.params, self.group = params, group
        self.size = dist.get_world_size(group)

    def __call__(self) -> None:
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for p in self.params:
            g = local_grad(p)
            if g is None:
                g = torch.zeros_like(p._local_tensor if isinstance(p, DTensor) else p)
                p.grad = DTensor.from_local(g, p.device_mesh, p.placements) if isinstance(p, DTensor) else g
            by_dtype.setdefault(g.dtype, []).append(g)
        for grads in by_dtype.values():
            flat = _flatten_dense_tensors(grads)
            dist.all_reduce(flat, group=self.group)
            flat.div_(self.size)
            for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
                g.copy_(synced)


def apply_ddp(model: nn.Module, pstate, device: torch.device) -> nn.Module:
    """Torch DDP for a whole model, or a GradientAllReduce registered as pstate.grad_sync."""
    if pstate.dims.tp == 1 and pstate.dims.pp == 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        return DDP(model, device_ids=ids, process_group=pstate.grad_group)
    pstate.grad_sync = chain(pstate.grad_sync, GradientAllReduce(list(model.parameters()), pstate.grad_group))
    return model


def chain(first, second):
    """Run `first` (if any) then `second`: grad syncs compose (tied-weight sync, then dp)."""
    if first is None:
        return second

    def both() -> None:
        first()
        second()
    return both


def dp_mesh(pstate):
    """The 1-D dp × sp DeviceMesh that FSDP2 shards over."""
    mesh, dims = pstate.mesh, pstate.dims
    if dims.sp == 1:
        return mesh["dp"]
    if dims.dp == 1:
        return mesh["sp"]
    return mesh["dp", "sp"]._flatten("dp_sp")


def apply_fsdp(model: nn.Module, pstate, device: torch.device, param_dtype: torch.dtype) -> nn.Module:
    """fully_shard each block, then the root (embedding, final norm, head); under pipeline
    parallelism each stage's embedding and output head instead (see below)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = dp_mesh(pstate)
    mp = None
    if device.type == "cuda" and param_dtype != torch.float32:
        mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    kwargs = {"mesh": mesh}
    if mp is not None:
        kwargs["mp_policy"] = mp
    for block in model.layers:
        fully_shard(block, **kwargs)
    if pstate.pipeline is not None:
        # pipeline stages call the blocks, the embedding and the output head themselves, never
        # PipelineModel.forward: each is its own FSDP unit, gathered around its own forward
        if model.has_first:
            fully_shard(model.embed, **kwargs)
        if model.has_last:
            fully_shard(model.output_head, **kwargs)
        return model
    fully_shard(model, **kwargs)
    return model
