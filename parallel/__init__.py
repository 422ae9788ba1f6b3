"""Everything that knows about process groups: set-up, layouts, and applying parallelism.

`parallelize(model, pstate, opts, device, make_optimizer)` applies, in this fixed order:
(pipeline cut) -> float8 linears (when enabled) -> TP -> activation checkpointing -> torch.compile
(when enabled) -> the data-parallel engine (which builds the optimizer). The pipeline cut comes first because every
later step acts on the blocks this rank keeps; data parallel comes last because it wraps (DDP,
DeepSpeed) or shards (FSDP2) the final parameters. It returns the Engine the trainer drives
(parallel/engine.py).
"""
from __future__ import annotations

import torch
from torch import nn

from parallel.checkpointing import apply_activation_checkpointing
from parallel.dims import LayoutError, ParallelDims
from parallel.engine import Engine, OptimizerFactory, chain
from parallel.layout import ParallelState
from parallel.options import EngineOptions

__all__ = ["ParallelDims", "LayoutError", "Engine", "EngineOptions", "parallelize", "apply_activation_checkpointing"]

# parallel.engine -> "module:class" of its Engine (imported only when chosen: DeepSpeed is optional)
DATA_PARALLEL_ENGINES = {
    "ddp": "parallel.data_parallel:DDPEngine",
    "fsdp": "parallel.data_parallel:FSDPEngine",
    "deepspeed": "parallel.deepspeed_engine:DeepSpeedEngine",
}


def engine_class(name: str):
    import importlib

    if name not in DATA_PARALLEL_ENGINES:
        raise LayoutError(f"parallel.engine={name!r} is not one of {', '.join(DATA_PARALLEL_ENGINES)}")
    module, cls = DATA_PARALLEL_ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def compile_blocks(model: nn.Module, tp: int) -> None:
    """torch.compile each block (one graph serves every block of a kind).

    Under tensor parallelism the vocab-parallel embedding's output is a view of a DTensor's local
    tensor; a compiled first block given that view sends its input gradient past DTensor's
    to_local in the backward (torch 2.13: "'Tensor' object has no attribute '_local_tensor'"),
    so the block gets a copy instead."""
    if tp > 1 and getattr(model, "embed", None) is not None:
        model.embed.register_forward_hook(lambda _m, _i, out: out.clone())
    for block in model.layers:
        block.compile()


def parallelize(model: nn.Module, pstate: ParallelState, opts: EngineOptions, device: torch.device,
                make_optimizer: OptimizerFactory) -> Engine:
    """Apply the configured parallelism to `model` (already on `device`); returns its Engine."""
    runner, grad_sync = None, None
    if pstate.dims.pp > 1:
        # stages are cut first (on the whole model), so TP and the rest apply to this rank's share
        from parallel.pipeline import PipelineRunner

        runner = PipelineRunner(model, pstate, opts, device)
        model = runner.model
    if opts.float8:
        from parallel.float8 import apply_float8

        apply_float8(model, device, pstate.dims.tp)
    if pstate.dims.tp > 1:
        from parallel.data_parallel import align_grads
        from parallel.tensor import apply_tensor_parallel

        apply_tensor_parallel(model, pstate.mesh["tp"])
        grad_sync = align_grads(list(model.parameters()))
    if opts.loss_chunk:
        if runner is not None:
            raise LayoutError("train.loss_chunk (chunked cross-entropy) does not run under pipeline parallelism; "
                              "set train.loss_chunk=0 or parallel.pp=1")
        from parallel.loss import apply_chunked_loss

        apply_chunked_loss(model, opts.loss_chunk, pstate.tp_group)
    if opts.activation_checkpointing:
        if opts.checkpoint_policy == "selective" and pstate.dims.sp > 1:
            # the sp replay skips DistAttn's ops in the recomputation, which per-op SAC cannot match
            raise LayoutError("train.checkpoint_policy=selective does not run under sequence parallelism; "
                              "use train.checkpoint_policy=full (rematerialization-aware) or parallel.sp=1")
        apply_activation_checkpointing(model, opts.checkpoint_policy)
    if opts.compile:
        compile_blocks(model, pstate.dims.tp)
    if runner is None:
        return engine_class(opts.engine).build(model, pstate, opts, device, make_optimizer, grad_sync)
    if runner.tie is not None:
        grad_sync = chain(grad_sync, runner.sync_tied)
    inner = engine_class(opts.engine).build(model, pstate, opts, device, make_optimizer, grad_sync,
                                            root_units=runner.fsdp_root_units())
    runner.build_schedule()
    from parallel.pipeline.engine import PipelineEngine

    return PipelineEngine(inner, runner)
