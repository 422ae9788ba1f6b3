"""Everything that knows about process groups: set-up, layouts, and applying parallelism.

`parallelize(model, dims, cfg, device)` applies, in this fixed order:
TP -> SP hooks -> activation checkpointing -> torch.compile (when enabled) -> data parallel.
"""
from __future__ import annotations

import torch
from torch import nn

from parallel.checkpointing import apply_activation_checkpointing
from parallel.dims import LayoutError, ParallelDims

__all__ = ["ParallelDims", "LayoutError", "parallelize", "apply_activation_checkpointing"]


def parallelize(model: nn.Module, pstate, cfg, device: torch.device) -> nn.Module:
    """Apply the configured parallelism to `model` (already on `device`); returns the module to train.

    `pstate` is the run's parallel.layout.ParallelState; sequence parallelism sets pstate.sp_hooks.
    """
    dims = pstate.dims
    for name in ("tp", "pp", "sp"):
        if getattr(dims, name) > 1:
            raise LayoutError(f"parallel.{name}={getattr(dims, name)} is not implemented yet; set parallel.{name}=1")
    if cfg.train.activation_checkpointing:
        apply_activation_checkpointing(model)
    if cfg.train.compile:
        for block in model.layers:
            block.compile()
    if dims.dp * dims.sp > 1:
        if cfg.parallel.engine != "ddp":
            raise LayoutError(f"parallel.engine={cfg.parallel.engine!r} is not implemented yet; use 'ddp'")
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        model = DDP(model, device_ids=ids, process_group=pstate.grad_group)
    return model
