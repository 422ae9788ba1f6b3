"""Everything that knows about process groups: set-up, layouts, and applying parallelism.

`parallelize(model, pstate, cfg, device)` applies, in this fixed order:
(pipeline cut) -> TP -> SP hooks -> activation checkpointing -> torch.compile (when enabled)
-> data parallel. The pipeline cut comes first because every later step acts on the blocks
this rank keeps; data parallel comes last because it wraps (DDP, FSDP2) or hooks the final
parameters. DeepSpeed is applied by `wrap_engine` once the optimizer exists.
"""
from __future__ import annotations

import torch
from torch import nn

from parallel.checkpointing import apply_activation_checkpointing
from parallel.dims import LayoutError, ParallelDims

__all__ = ["ParallelDims", "LayoutError", "parallelize", "wrap_engine", "apply_activation_checkpointing"]


def parallelize(model: nn.Module, pstate, cfg, device: torch.device) -> nn.Module:
    """Apply the configured parallelism to `model` (already on `device`); returns the module to train.

    `pstate` is the run's parallel.layout.ParallelState; sequence parallelism sets pstate.sp_hooks.
    """
    dims = pstate.dims
    runner = None
    if dims.pp > 1:
        # stages are cut first (on the whole model), so TP and the rest apply to this rank's share
        from parallel.pipeline import PipelineRunner

        runner = PipelineRunner(model, pstate, cfg, device)
        pstate.pipeline = runner
        model = runner.model
    if dims.tp > 1:
        from parallel.data_parallel import align_grads
        from parallel.tensor import apply_tensor_parallel

        apply_tensor_parallel(model, pstate.mesh["tp"])
        pstate.grad_sync = align_grads(list(model.parameters()))
    if dims.sp > 1:
        # LightSeq sequence parallelism: the hooks the mixers call as ctx.sp (parallel/sequence/)
        from parallel.sequence import SequenceParallelHooks

        pstate.sp_hooks = SequenceParallelHooks(pstate.mesh["sp"].get_group())
    if cfg.train.activation_checkpointing:
        apply_activation_checkpointing(model)
    if cfg.train.compile:
        for block in model.layers:
            block.compile()
    model = apply_data_parallel(model, pstate, cfg, device)
    if runner is not None:
        runner.build_schedule()
    return model


def apply_data_parallel(model: nn.Module, pstate, cfg, device: torch.device) -> nn.Module:
    """The last step of `parallelize`: gradient averaging over dp × sp (DeepSpeed wraps later,
    in `wrap_engine`, because it needs the optimizer)."""
    from parallel.data_parallel import apply_ddp, apply_fsdp, chain

    dims, engine = pstate.dims, cfg.parallel.engine
    if pstate.pipeline is not None and pstate.pipeline.tie is not None:
        pstate.grad_sync = chain(pstate.grad_sync, pstate.pipeline.sync_tied)
    if engine == "deepspeed":
        from parallel.deepspeed_engine import check_deepspeed_layout

        check_deepspeed_layout(pstate)
        return model
    if dims.dp * dims.sp == 1:
        return model
    if engine == "fsdp":
        bf16 = device.type == "cuda" and cfg.train.dtype in ("auto", "bfloat16")
        return apply_fsdp(model, pstate, device, torch.bfloat16 if bf16 else torch.float32)
    return apply_ddp(model, pstate, device)


def wrap_engine(model: nn.Module, optimizer, pstate, cfg):
    """(model, optimizer) to train with: DeepSpeed's engine when parallel.engine='deepspeed'."""
    if cfg.parallel.engine != "deepspeed":
        return model, optimizer
    from parallel.deepspeed_engine import wrap_deepspeed

    return wrap_deepspeed(model, optimizer, pstate, cfg)
