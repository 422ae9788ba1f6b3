"""Build this rank's pipeline stages and run one step's micro-batches through a schedule.

Uses torch.distributed.pipelining: PipelineStage per StageChunk, and ScheduleGPipe,
Schedule1F1B or ScheduleInterleaved1F1B (two chunks per rank, looped placement: chunk c
lives on pp rank c % pp). The loss is computed on the last stage as the summed
cross-entropy (vocab-parallel under tp) times the step's scale, with `scale_grads=False`,
so gradients match the non-pipelined engine (parallel/engine.py) exactly.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

from models.flops import head_flops
from parallel.layout import ParallelState
from parallel.loss import token_loss_sum
from parallel.options import EngineOptions
from parallel.pipeline.split import balanced_split, layer_costs
from parallel.pipeline.stage import PipelineModel, StageChunk

SCHEDULES = ("gpipe", "1f1b", "interleaved_1f1b")


def chunk_ranges(model: nn.Module, n_chunks: int, seq_len: int) -> list[tuple[int, int]]:
    return balanced_split(layer_costs(model, seq_len), n_chunks, tail_cost=head_flops(model.cfg))


def tie_group(pstate: ParallelState):
    """Group {first stage, last stage} of this rank's (dp, sp, tp) coordinate (tied embeddings)."""
    mesh = pstate.mesh.mesh                          # rank ids, shape (pp, dp, sp, tp)
    pp = mesh.shape[0]
    if pp == 2:
        return pstate.pp_group
    mine = None
    flat_first, flat_last = mesh[0].flatten().tolist(), mesh[pp - 1].flatten().tolist()
    for a, b in zip(flat_first, flat_last):         # every rank creates every group, same order
        group = dist.new_group([a, b])
        if pstate.rank in (a, b):
            mine = group
    return mine


class IndexedStage(PipelineStage):
    """A PipelineStage that tells its chunk which micro-batch it is about to run (the chunk
    looks up that micro-batch's positions and doc ids; shape inference runs micro-batch 0's)."""

    def forward_one_chunk(self, fwd_chunk_id: int, *args, **kwargs):
        self.submod.mb_index = fwd_chunk_id
        return super().forward_one_chunk(fwd_chunk_id, *args, **kwargs)


class PipelineRunner:
    """Owns the stages and schedule; `forward_backward` replaces the plain micro-batch loop."""

    def __init__(self, full: nn.Module, pstate: ParallelState, opts: EngineOptions, device: torch.device):
        pp, rank = pstate.dims.pp, pstate.pp_rank
        schedule = opts.pp_schedule
        virtual = 2 if schedule == "interleaved_1f1b" else 1
        n_chunks = pp * virtual
        ranges = chunk_ranges(full, n_chunks, opts.seq_len)
        mine = [c for c in range(n_chunks) if c % pp == rank]
        layer_ids = [i for c in mine for i in range(*ranges[c])]
        self.model = PipelineModel(full, layer_ids, first=rank == 0, last=rank == pp - 1)
        self.chunks = [StageChunk(self.model, *ranges[c], first=c == 0, last=c == n_chunks - 1) for c in mine]
        self.pstate, self.device, self.schedule_name = pstate, device, schedule
        self.n_micro = opts.pp_microbatches
        self.scale = 1.0
        self.ce_sums: list[torch.Tensor] = []
        self.stage_ids, self.n_chunks, self.ranges = mine, n_chunks, ranges
        self.tie = tie_group(pstate) if self.model.tied else None
        self.schedule = None
        self.shape: tuple[int, ...] | None = None    # micro-batch shape the stages were built for

    def build_schedule(self) -> None:
        """After TP / activation checkpointing / data parallel have been applied to self.model."""
        stages = [IndexedStage(chunk, c, self.n_chunks, self.device, group=self.pstate.pp_group)
                  for chunk, c in zip(self.chunks, self.stage_ids)]
        kwargs = dict(n_microbatches=self.n_micro, loss_fn=self.loss_fn, scale_grads=False)
        if self.schedule_name == "interleaved_1f1b":
            self.schedule = ScheduleInterleaved1F1B(stages, **kwargs)
        elif self.schedule_name == "1f1b":
            self.schedule = Schedule1F1B(stages[0], **kwargs)
        else:
            self.schedule = ScheduleGPipe(stages[0], **kwargs)

    def loss_fn(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        ce = token_loss_sum(logits, labels, self.pstate.tp_group)
        self.ce_sums.append(ce.detach().double().cpu())
        return ce * self.scale

    def fsdp_root_units(self) -> list[nn.Module]:
        """FSDP2 units besides the blocks: stages call the embedding and output head directly."""
        m = self.model
        return ([m.embed] if m.has_first else []) + ([m.output_head] if m.has_last else [])

    def tied_params(self) -> list[nn.Parameter]:
        return [self.model.embed.weight] if self.tie is not None else []

    def sync_tied(self) -> None:
        """Sum the tied embedding/head gradient over the first and last stage."""
        if self.tie is None:
            return
        from parallel.data_parallel import local_grad

        w = self.model.embed.weight
        g = local_grad(w)
        if g is None:
            g = torch.zeros_like(w.to_local() if hasattr(w, "to_local") else w)
            from torch.distributed.tensor import DTensor

            w.grad = DTensor.from_local(g, w.device_mesh, w.placements) if isinstance(w, DTensor) else g
            g = local_grad(w)
        dist.all_reduce(g, group=self.tie)

    def forward_backward(self, batches, scale: float) -> torch.Tensor:
        """Run every micro-batch through the schedule; returns the summed CE (last stage, else 0)."""
        self.scale = scale
        first = self.pstate.pp_rank == 0
        total = torch.zeros((), dtype=torch.float64)
        for b in batches:
            if tuple(b.tokens.shape) != self.shape:
                # stages infer send/receive shapes on their first step; a curriculum changes the
                # row length (or count), so build fresh stages for the new shape (same on every rank)
                if self.shape is not None:
                    self.build_schedule()
                self.shape = tuple(b.tokens.shape)
            self.ce_sums = []
            pos = torch.tensor_split(b.positions, self.n_micro, 0)
            docs = torch.tensor_split(b.doc_ids, self.n_micro, 0)
            for chunk in self.chunks:
                chunk.meta = list(zip(pos, docs))
                chunk.sp = self.pstate.sp_hooks
            args = (b.tokens,) if first else ()
            self.schedule.step(*args, target=b.labels, return_outputs=False)
            # the first step's shape inference also calls loss_fn (on placeholder data): keep the real ones
            for ce in self.ce_sums[-self.n_micro:]:
                total += ce
        return total
