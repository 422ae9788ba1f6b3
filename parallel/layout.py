"""ParallelState: this process's place in the (pp, dp, sp, tp) layout, built once per run.

The trainer asks it for everything layout-dependent: which data-parallel rows to load,
which sequence slice to keep, the hooks the model uses under sequence parallelism, which
group averages gradients (dp × sp: sequence-parallel ranks hold different tokens of the
same rows, so their gradients add up exactly like data-parallel ones), and whether this rank
contributes to the global loss and token counts (one rank per (dp, sp) coordinate: tp rank
0 on the last pipeline stage), so a single all-reduce over the world gives global figures.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from parallel.dims import ParallelDims, validate_layout
from parallel.distributed import init_distributed


@dataclass
class ParallelState:
    dims: ParallelDims
    rank: int = 0
    world: int = 1
    mesh: Any = None
    dp_rank: int = 0
    sp_rank: int = 0
    tp_rank: int = 0
    pp_rank: int = 0
    sp_hooks: Any = None          # passed to the model as `sp=` (None without sequence parallelism)
    grad_group: Any = None        # process group over dp × sp (None: default group or single process)
    tp_group: Any = None          # tensor-parallel group (None when tp = 1)
    pp_group: Any = None          # pipeline group (None when pp = 1)
    pipeline: Any = None          # parallel.pipeline.PipelineRunner when pp > 1 (train/step.py uses it)
    grad_sync: Any = None         # callable run after the backward passes (manual dp × sp all-reduce)

    @property
    def grad_group_size(self) -> int:
        return self.dims.dp * self.dims.sp

    @property
    def is_loss_rank(self) -> bool:
        return self.tp_rank == 0 and self.pp_rank == self.dims.pp - 1


def setup_parallel(cfg, device: torch.device) -> ParallelState:
    """Initialise torch.distributed (if launched with several processes) and the DeviceMesh."""
    rank, world, _ = init_distributed(device.type)
    dims = ParallelDims.from_config(cfg.parallel, world)
    validate_layout(dims, cfg.model, cfg.parallel, cfg.data.batch_size)
    state = ParallelState(dims=dims, rank=rank, world=world)
    if world == 1:
        return state
    mesh = dims.build_mesh(device.type)
    state.mesh = mesh
    state.dp_rank = mesh.get_local_rank("dp")
    state.sp_rank = mesh.get_local_rank("sp")
    state.tp_rank = mesh.get_local_rank("tp")
    state.pp_rank = mesh.get_local_rank("pp")
    if dims.dp * dims.sp == world:
        state.grad_group = dist.group.WORLD
    else:
        state.grad_group = mesh["dp", "sp"]._flatten("dp_sp").get_group()
    if dims.tp > 1:
        state.tp_group = mesh["tp"].get_group()
    if dims.pp > 1:
        state.pp_group = mesh["pp"].get_group()
    return state
