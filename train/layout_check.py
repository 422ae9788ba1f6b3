"""The trainer's whole parallel-layout validation as one function of (config, world size).

The trainer calls it after torch.distributed is up; `python -m launch local|slurm|resume`
(also with --dry-run) calls the same function with the world size it is about to start, so a
layout the trainer would refuse never reaches torchrun or the SLURM queue.
"""
from __future__ import annotations

from types import SimpleNamespace

from data.errors import DataError


def validate_run_layout(cfg, world: int):
    """Raise LayoutError / DataError (one line) for a layout this run cannot use; returns its ParallelDims."""
    from data.loader import possible_lengths
    from parallel.dims import ParallelDims, validate_layout

    dims = ParallelDims.from_config(cfg.parallel, world)
    validate_layout(dims, cfg.model, cfg.parallel, cfg.data.batch_size)
    lengths = possible_lengths(cfg.data)
    if any(n % dims.sp for n in lengths):
        raise DataError(f"the data's row lengths {sorted(lengths)} must all be multiples of parallel.sp="
                        f"{dims.sp}; make data.seq_len, data.curriculum_len_step and data.dd_min_len multiples of it")
    if cfg.parallel.engine == "deepspeed":
        from parallel.deepspeed_engine import check_deepspeed_layout

        check_deepspeed_layout(SimpleNamespace(dims=dims, world=world))
    return dims
