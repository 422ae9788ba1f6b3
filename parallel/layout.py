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


@dataclass(frozen=True)
class ParallelState:
    """Built once by setup_parallel and never changed (what parallelize adds lives in the Engine)."""
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

    @property
    def grad_group_size(self) -> int:
        return self.dims.dp * self.dims.sp

    @property
    def is_loss_rank(self) -> bool:
        return self.tp_rank == 0 and self.pp_rank == self.dims.pp - 1


def setup_parallel(pcfg, model_cfg, batch_size: int, device: torch.device) -> ParallelState:
    """Initialise torch.distributed (if launched with several processes) and the DeviceMesh.

    `pcfg` is the [parallel] config section, `model_cfg` the ModelConfig (the layout must fit
    it), `batch_size` the rows per data-parallel rank (pipeline micro-batches split it)."""
    rank, world, _ = init_distributed(device.type)
    dims = ParallelDims.from_config(pcfg, world)
    validate_layout(dims, model_cfg, pcfg, batch_size)
    if world == 1:
        return ParallelState(dims=dims, rank=rank, world=world)
    mesh = dims.build_mesh(device.type)
    if dims.dp * dims.sp == world:
        grad_group = dist.group.WORLD
    else:
        grad_group = mesh["dp", "sp"]._flatten("dp_sp").get_group()
    sp_hooks = None
    if dims.sp > 1:
        # LightSeq sequence parallelism: the hooks the mixers call as ctx.sp (parallel/sequence/)
        from parallel.sequence import SequenceParallelHooks

        sp_hooks = SequenceParallelHooks(mesh["sp"].get_group(), mode=getattr(pcfg, "sp_mode", "distattn"),
                                         head_group=getattr(pcfg, "sp_head_group", 1))
    return ParallelState(
        dims=dims, rank=rank, world=world, mesh=mesh, grad_group=grad_group, sp_hooks=sp_hooks,
        dp_rank=mesh.get_local_rank("dp"), sp_rank=mesh.get_local_rank("sp"),
        tp_rank=mesh.get_local_rank("tp"), pp_rank=mesh.get_local_rank("pp"),
        tp_group=mesh["tp"].get_group() if dims.tp > 1 else None,
        pp_group=mesh["pp"].get_group() if dims.pp > 1 else None)
