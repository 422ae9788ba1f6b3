"""Engine: the one object between the trainer and parallelism.

`parallelize(...)` (parallel/__init__.py) returns an Engine for the configured data-parallel
engine — DDP (data_parallel.py), FSDP2 (data_parallel.py) or DeepSpeed (deepspeed_engine.py);
a PipelineEngine (pipeline/engine.py) wraps one of them under pipeline parallelism. The
trainer sees only this interface:
- `forward_backward(batches, global_count, hooks)`: every micro-batch of one optimizer step;
  each micro-batch's summed cross-entropy is scaled by grad_group_size / global_count, so
  gradient averaging over dp × sp yields the gradient of the mean loss over every label token
  of the global step, however tokens are split over ranks and micro-batches;
- `clip(max_norm)`, `set_lr(lr)`, `step()` (optimizer step and zero_grad);
- `save(directory)` / `load(directory)`: model and optimizer state for checkpoints
  (`load_weights(directory)`: the model only, for an imported step-0 checkpoint);
- `module` (the model itself, unwrapped), `sp_hooks`, `is_loss_rank`, `autocast()`.
Everything an engine does differently lives in its own file, as an override of this base.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from parallel.grad_clip import clip_grad_norm
from parallel.layout import ParallelState
from parallel.loss import token_loss_sum
from parallel.options import EngineOptions

# optimizer hyper-parameters stored per parameter name ("param_groups.<fqn>.lr"), not as one
# list of groups: a pipeline stage's groups hold only its own parameters, and the per-name
# form is what lets a checkpoint move between pp layouts (torchtitan does the same)
OPTIM_FLAT = StateDictOptions(flatten_optimizer_state_dict=True)

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


class ForwardHooks(Protocol):
    """Per-micro-batch additions to the forward (train/length_gen.py's carried states)."""

    def forward_kwargs(self, batch) -> dict: ...

    def after_forward(self, out: Any, batch) -> torch.Tensor: ...


def load_model_weights(directory: str | Path, model: nn.Module) -> None:
    """Model weights only (evaluation, an imported step-0 checkpoint), from a checkpoint written by
    any parallel layout; `model` may be wrapped (DDP) or sharded (FSDP2, tp DTensors)."""
    sd = {"model": get_model_state_dict(model)}
    dcp.load(sd, checkpoint_id=str(directory))
    set_model_state_dict(model, sd["model"], options=StateDictOptions(strict=True))


def chain(first: Callable[[], None] | None, second: Callable[[], None] | None):
    """Run `first` then `second` (either may be None): grad syncs compose (tied weights, then dp)."""
    if first is None or second is None:
        return first or second

    def both() -> None:
        first()
        second()
    return both


class Engine:
    """Plain engine: one process, or gradients averaged by `grad_sync` after the backward passes.

    `model` is what the forward calls (a wrapper such as DDP, or the module itself); `module`
    is the model underneath, for evaluation, metrics and the optimizer's parameter names.
    """

    def __init__(self, model: nn.Module, optimizer, pstate: ParallelState, opts: EngineOptions,
                 device: torch.device, grad_sync: Callable[[], None] | None = None, module: nn.Module | None = None):
        self.model, self.optimizer, self.pstate, self.opts = model, optimizer, pstate, opts
        self.device, self.grad_sync = device, grad_sync
        self.module = model if module is None else module

    # -- what the trainer reads -------------------------------------------------------------
    @property
    def sp_hooks(self):
        return self.pstate.sp_hooks

    @property
    def is_loss_rank(self) -> bool:
        return self.pstate.is_loss_rank

    def autocast(self):
        """bf16 autocast on CUDA when the run asks for it; nothing otherwise."""
        if self.opts.bf16 and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    # -- one optimizer step -----------------------------------------------------------------
    def forward_backward(self, batches: list, global_count: int, hooks: ForwardHooks | None = None) -> torch.Tensor:
        """Forward+backward on every micro-batch; returns this rank's summed loss (float64, detached)."""
        scale = self.pstate.grad_group_size / max(1, global_count)
        loss_sum = torch.zeros((), dtype=torch.float64)
        for i, b in enumerate(batches):
            with self.sync_context(last=i == len(batches) - 1):
                ce = self.loss_sum(b, hooks)
                self.backward(ce * scale)
            loss_sum += ce.detach().double().cpu()
        if self.grad_sync is not None:
            self.grad_sync()
        return loss_sum

    def loss_sum(self, b, hooks: ForwardHooks | None) -> torch.Tensor:
        """Summed cross-entropy of micro-batch `b`; with train.loss_chunk the model computes it
        chunk by chunk inside its forward (parallel/loss.py), never holding all the logits."""
        if not self.opts.loss_chunk:
            return token_loss_sum(self.forward(b, hooks), b.labels, self.pstate.tp_group)
        self.module.loss_labels = b.labels
        try:
            return self.forward(b, hooks)
        finally:
            self.module.loss_labels = None

    def forward(self, b, hooks: ForwardHooks | None) -> torch.Tensor:
        """The logits of micro-batch `b` (hooks may add initial states and read final ones)."""
        with self.autocast():
            if hooks is None:
                return self.model(b.tokens, b.positions, b.doc_ids, sp=self.sp_hooks)
            out = self.model(b.tokens, b.positions, b.doc_ids, sp=self.sp_hooks, **hooks.forward_kwargs(b))
            return hooks.after_forward(out, b)

    def sync_context(self, last: bool):
        """Context of one micro-batch's forward+backward (DDP skips its all-reduce unless `last`)."""
        return nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip(self, max_norm: float) -> torch.Tensor:
        """Clip gradients to global norm `max_norm` (inf: only measure); returns the norm before."""
        return clip_grad_norm(list(self.model.parameters()), max_norm)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    # -- checkpoints ------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Model and optimizer state into `directory` via torch.distributed.checkpoint (resharded on load)."""
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=OPTIM_FLAT)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(directory))

    def load_weights(self, directory: Path) -> None:
        """Model weights only (a weights-only checkpoint); the optimizer starts fresh."""
        load_model_weights(directory, self.model)

    def load(self, directory: Path) -> None:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=OPTIM_FLAT)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=str(directory))
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                       options=OPTIM_FLAT)
