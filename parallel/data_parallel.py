"""Data parallelism over the dp × sp group: DDP, FSDP2, or a plain gradient all-reduce.

- DDP (torch) when the model is whole on every rank (tp = pp = 1): bucketed all-reduce
  overlapped with the backward pass.
- GradientAllReduce when tensor or pipeline parallelism has split the model: DDP does not
  take DTensor parameters or pipeline stages, so after the backward passes each rank
  all-reduces the *local* gradient shards of its own parameters over dp × sp (flattened
  into one buffer per dtype, so one collective per step), then divides by the group size
  (the same averaging DDP does; train/step.py scales the loss for it).
- FSDP2 (`fully_shard`) per block, then on the root: parameters, gradients and optimizer
  states are sharded over dp × sp; with EngineOptions.bf16, bf16 parameters in compute with fp32
  gradient reduction (MixedPrecisionPolicy; on CPU/gloo too). With tp > 1
  the parameters are already tp DTensors and FSDP2 shards them over the dp × sp mesh
  dimension as a 2-D (dp_sp, tp) layout.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.distributed.tensor import DTensor

from parallel.engine import Engine, OptimizerFactory, chain
from parallel.layout import ParallelState
from parallel.options import EngineOptions


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


class DDPEngine(Engine):
    """Torch DDP for a whole model (tp = pp = 1), else a GradientAllReduce after the backward
    passes; one process: the plain engine. DDP all-reduces only with the last micro-batch."""

    @classmethod
    def build(cls, model: nn.Module, pstate: ParallelState, opts: EngineOptions, device: torch.device,
              make_optimizer: OptimizerFactory, grad_sync=None, root_units=None) -> Engine:
        optimizer = make_optimizer(model)
        if pstate.dims.dp * pstate.dims.sp == 1:
            return cls(model, optimizer, pstate, opts, device, grad_sync)
        if pstate.dims.tp == 1 and pstate.dims.pp == 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if device.type == "cuda" else None
            ddp = DDP(model, device_ids=ids, process_group=pstate.grad_group)
            return cls(ddp, optimizer, pstate, opts, device, grad_sync, module=model)
        reduce = GradientAllReduce(list(model.parameters()), pstate.grad_group)
        return cls(model, optimizer, pstate, opts, device, chain(grad_sync, reduce))

    def sync_context(self, last: bool):
        return self.model.no_sync() if not last and hasattr(self.model, "no_sync") else nullcontext()


class FSDPEngine(Engine):
    """FSDP2: parameters, gradients and optimizer states sharded over dp × sp (see module doc)."""

    @classmethod
    def build(cls, model: nn.Module, pstate: ParallelState, opts: EngineOptions, device: torch.device,
              make_optimizer: OptimizerFactory, grad_sync=None, root_units: list[nn.Module] | None = None) -> Engine:
        if pstate.dims.dp * pstate.dims.sp > 1:
            apply_fsdp(model, pstate, device, torch.bfloat16 if opts.bf16 else torch.float32, root_units)
        return cls(model, make_optimizer(model), pstate, opts, device, grad_sync)


def dp_mesh(pstate: ParallelState):
    """The 1-D dp × sp DeviceMesh that FSDP2 shards over."""
    mesh, dims = pstate.mesh, pstate.dims
    if dims.sp == 1:
        return mesh["dp"]
    if dims.dp == 1:
        return mesh["sp"]
    return mesh["dp", "sp"]._flatten("dp_sp")


def apply_fsdp(model: nn.Module, pstate: ParallelState, device: torch.device, param_dtype: torch.dtype,
               root_units: list[nn.Module] | None = None) -> nn.Module:
    """fully_shard each block, then the root (embedding, final norm, head), or instead of the
    root the given `root_units` (a pipeline stage's embedding and output head: stages call
    them, never the stage model's forward, so each is its own unit, gathered around its own forward)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs = {"mesh": dp_mesh(pstate)}
    if param_dtype != torch.float32:     # gathered in param_dtype, gradients reduced and kept in fp32
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.layers:
        fully_shard(block, **kwargs)
    for unit in [model] if root_units is None else root_units:
        fully_shard(unit, **kwargs)
    return model
