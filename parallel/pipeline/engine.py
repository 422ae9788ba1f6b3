"""PipelineEngine: pipeline parallelism around one data-parallel engine (DDP or FSDP2).

The data-parallel engine inside keeps the optimizer, the checkpoint state and the gradient
sync over dp × sp (to which the tied-embedding sync between first and last stage is chained
when the stages are built); this wrapper replaces the micro-batch loop by the pipeline
schedule and makes the clip norm global over the stages.
"""
from __future__ import annotations

from pathlib import Path

import torch

from parallel.engine import Engine
from parallel.grad_clip import clip_grad_norm
from parallel.pipeline.runner import PipelineRunner


class PipelineEngine(Engine):
    """Reads like the engine it wraps (module, layout, autocast); runs the schedule, clips over
    the stages, and leaves the optimizer and the checkpoint state to `inner`."""

    def __init__(self, inner: Engine, runner: PipelineRunner):
        super().__init__(inner.model, inner.optimizer, inner.pstate, inner.opts, inner.device, inner.grad_sync,
                         module=inner.module)
        self.inner, self.runner = inner, runner

    def forward_backward(self, batches: list, global_count: int, hooks=None) -> torch.Tensor:
        """The schedule runs every micro-batch (forward hooks are refused by validation under pp)."""
        scale = self.pstate.grad_group_size / max(1, global_count)
        with self.autocast():
            loss_sum = self.runner.forward_backward(batches, scale)
        if self.inner.grad_sync is not None:
            self.inner.grad_sync()
        return loss_sum

    def clip(self, max_norm: float) -> torch.Tensor:
        runner = self.runner
        skip: set[int] = set()
        if runner.tie is not None and not runner.model.has_first:
            skip = {id(p) for p in runner.tied_params()}   # the last stage's copy of the tied embedding
        return clip_grad_norm(list(self.inner.model.parameters()), max_norm, self.pstate.pp_group, skip)

    def set_lr(self, lr: float) -> None:
        self.inner.set_lr(lr)

    def step(self) -> None:
        self.inner.step()

    def save(self, directory: Path) -> None:
        self.inner.save(directory)

    def load(self, directory: Path) -> None:
        self.inner.load(directory)

    def load_weights(self, directory: Path) -> None:
        self.inner.load_weights(directory)
