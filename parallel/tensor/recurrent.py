"""Tensor parallelism for the recurrent mixers: Mamba-2 (`M`) and Griffin (`R`).

Both split by heads so that everything between the input and output projections (conv,
SSD / RG-LRU scan, gated norm, block-diagonal gates) runs on local channels without
communication; the output projection is row-parallel (one all-reduce), like Megatron's MLP.

The mixers read their weights as module attributes (`self.dt_bias`, `self.conv_weight`...),
so during forward a pre-hook puts this rank's *local slice* of each such weight in the
module's instance __dict__ (found before nn.Module's parameter lookup) and a post-hook removes
it; parameter names, and so checkpoints, stay those of the single-process model.
- Weights whose local part is a contiguous block (per-head dt_bias, A_log, D, the gated
  norm's weight, Griffin's conv, gates and Λ) become DTensors sharded on dim 0; the slice is
  their local shard (memory is split, DCP reshards them).
- Mamba-2's in_proj and conv rows interleave [z | x | B | C | dt] segments, so a rank's rows
  are not one block of the canonical layout; those weights stay replicated, each rank
  computes with its rows only (compute is split), and their gradients are summed over tp by
  a parameter hook (each rank fills disjoint rows). This keeps the canonical layout, hence
  layout-independent checkpoints, at the cost of replicated in_proj memory. With fewer B/C
  groups than tp ranks (ngroups=1 is common) each rank keeps its heads' group, replicated,
  like GQA key/value heads.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from parallel.tensor.collectives import all_reduce_sum, copy_to_tp
from parallel.tensor.views import local_views


def shard_dim0(module: nn.Module, names: list[str], tp_mesh) -> dict:
    """Make module.<names> DTensors sharded on dim 0; returns {name: to-local view}."""
    for name in names:
        p = module._parameters[name]
        module._parameters[name] = nn.Parameter(distribute_tensor(p.data, tp_mesh, [Shard(0)]))
    return {name: (lambda p: p.to_local()) for name in names}


def replicated_rows(names: list[str], rows: torch.Tensor, group) -> dict:
    """Views of replicated weights keeping `rows`; the gradient is summed over tp on its way
    back to the full weight (copy_to_tp), so it also works when FSDP2 swaps the parameters."""
    return {name: (lambda p, _rows=rows: copy_to_tp(p, group).index_select(0, _rows)) for name in names}


def _segments(bounds: list[tuple[int, int, int]], tp: int, rank: int) -> torch.Tensor:
    """This rank's rows of (offset, length, units) segments, concatenated: the rank-th 1/tp of
    each segment when its units (heads, groups) divide by tp, else (fewer units than tp, e.g.
    one B/C group) the one unit rank // (tp / units), replicated over those ranks."""
    parts = []
    for offset, length, units in bounds:
        if units % tp == 0:
            n = length // tp
            lo = offset + rank * n
        else:
            n = length // units
            lo = offset + (rank // (tp // units)) * n
        parts.append(torch.arange(lo, lo + n))
    return torch.cat(parts)


def shard_mamba2(m: nn.Module, tp_mesh) -> None:
    tp, rank, group = tp_mesh.size(), tp_mesh.get_local_rank(), tp_mesh.get_group()
    di, g, h = m.d_inner, m.ngroups, m.nheads
    gn = g * m.d_state
    in_rows = _segments([(0, di, h), (di, di, h), (2 * di, gn, g), (2 * di + gn, gn, g),
                         (2 * di + 2 * gn, h, h)], tp, rank)
    conv_rows = _segments([(0, di, h), (di, gn, g), (di + gn, gn, g)], tp, rank)
    device = m.in_proj.weight.device
    in_rows, conv_rows = in_rows.to(device), conv_rows.to(device)

    local_views(m.in_proj, replicated_rows(["weight"], in_rows, group))
    m.in_proj.register_forward_pre_hook(lambda _m, args: (copy_to_tp(args[0], group), *args[1:]))
    views = replicated_rows(["conv_weight", "conv_bias"], conv_rows, group)
    views.update(shard_dim0(m, ["dt_bias", "A_log", "D"], tp_mesh))
    local_views(m, views)
    local_views(m.norm, shard_dim0(m.norm, ["weight"], tp_mesh))
    if g % tp:                      # one norm group spread over all tp ranks
        split_group_norm(m.norm, group)
    parallelize_module(m, tp_mesh, {"out_proj": RowwiseParallel()})
    m.d_inner, m.nheads, m.ngroups = di // tp, h // tp, max(1, g // tp)
    m.conv_channels = m.d_inner + 2 * m.ngroups * m.d_state


def split_group_norm(norm: nn.Module, group) -> None:
    """Gated RMSNorm whose single group spans the tp ranks: the mean square is all-reduced."""
    import torch.nn.functional as F

    full = norm.group_size

    def forward(y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        work = torch.float64 if y.dtype == torch.float64 else torch.float32
        gz = y.to(work) * F.silu(z.to(work))
        ms = all_reduce_sum(gz.pow(2).sum(-1, keepdim=True), group) / full
        return (gz * torch.rsqrt(ms + norm.eps)).to(y.dtype) * norm.weight

    norm.forward = forward


def shard_griffin(g: nn.Module, tp_mesh) -> None:
    tp = tp_mesh.size()
    parallelize_module(g, tp_mesh, {"linear_y": ColwiseParallel(), "linear_x": ColwiseParallel(),
                                    "linear_out": RowwiseParallel()})
    local_views(g, shard_dim0(g, ["conv_weight", "conv_bias"], tp_mesh))
    local_views(g.rglru, shard_dim0(g.rglru, ["a_param"], tp_mesh), owner=g)   # rglru is used via a method
    for gate in (g.rglru.gate_a, g.rglru.gate_x):
        local_views(gate, shard_dim0(gate, ["weight", "bias"], tp_mesh))
        gate.blocks //= tp
    g.width //= tp


def shard_recurrent(mixer: nn.Module, tp_mesh) -> None:
    from models.griffin import GriffinRecurrent
    from models.mamba2 import Mamba2

    if isinstance(mixer, Mamba2):
        shard_mamba2(mixer, tp_mesh)
    elif isinstance(mixer, GriffinRecurrent):
        shard_griffin(mixer, tp_mesh)
    else:
        raise NotImplementedError(f"tensor parallelism has no plan for {type(mixer).__name__}; set parallel.tp=1")
