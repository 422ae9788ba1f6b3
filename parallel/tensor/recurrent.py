"""Tensor parallelism for the recurrent mixers: Mamba-2 (`M`) and Griffin (`R`).

Both split by heads so that everything between the input and output projections (conv,
SSD / RG-LRU scan, gated norm, block-diagonal gates) runs on local channels without
communication; the output projection is row-parallel (one all-reduce), like Megatron's MLP.

The mixers read their weights as module attributes (`self.dt_bias`, `self.in_proj_x.weight`...),
so during forward a pre-hook puts this rank's *local slice* of each such weight in the
module's instance __dict__ (found before nn.Module's parameter lookup) and a post-hook removes
it; parameter names, and so checkpoints, stay those of the single-process model.
- Every weight's local part is a contiguous block of heads or groups, so it becomes a DTensor
  sharded on dim 0 and the view is its local shard (memory is split, DCP reshards them):
  per-head dt_bias, A_log, D and the gated norm's weight; Mamba-2's per-component projections
  in_proj_z/x/dt and conv_x (by heads), in_proj_B/C and conv_B/C (by groups); Griffin's conv,
  gates and Λ. The mixer concatenates its local components, so it runs one in_proj matmul on
  the rank's [z | x | B | C | dt] rows and one conv on its [x | B | C] channels.
- With fewer Mamba-2 B/C groups than tp ranks (ngroups=1 is common) in_proj_B/C and conv_B/C
  stay replicated, like GQA key/value heads: each rank computes its heads' group and the
  gradient is summed over tp on its way back to the full weight (copy_to_tp).
The mixer's input enters through copy_to_tp (each rank back-propagates its rows' share).
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


def group_rows(rows_per_group: int, groups: int, tp: int, rank: int) -> torch.Tensor:
    """Rows of the one B/C group this rank's heads use when groups < tp (rank // (tp / groups))."""
    lo = (rank // (tp // groups)) * rows_per_group
    return torch.arange(lo, lo + rows_per_group)


def shard_mamba2(m: nn.Module, tp_mesh) -> None:
    tp, rank, group = tp_mesh.size(), tp_mesh.get_local_rank(), tp_mesh.get_group()
    di, g, h = m.d_inner, m.ngroups, m.nheads
    by_heads = [(m.in_proj_z, ["weight"]), (m.in_proj_x, ["weight"]), (m.in_proj_dt, ["weight"]),
                (m.conv_x, ["weight", "bias"])]
    by_groups = [(m.in_proj_B, ["weight"]), (m.in_proj_C, ["weight"]),
                 (m.conv_B, ["weight", "bias"]), (m.conv_C, ["weight", "bias"])]
    for part, names in by_heads + (by_groups if g % tp == 0 else []):
        local_views(part, shard_dim0(part, names, tp_mesh), owner=m)      # parts are read, not called
    if g % tp:
        rows = group_rows(m.d_state, g, tp, rank).to(m.in_proj_B.weight.device)
        for part, names in by_groups:
            local_views(part, replicated_rows(names, rows, group), owner=m)
    m.register_forward_pre_hook(lambda _m, args: (copy_to_tp(args[0], group), *args[1:]))
    local_views(m, shard_dim0(m, ["dt_bias", "A_log", "D"], tp_mesh))
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
