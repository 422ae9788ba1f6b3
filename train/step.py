"""One optimizer step: load the micro-batches, run them through the engine, clip, step.

The loss is the mean over every label token of the global step (all ranks, all micro-batches):
the global label count is all-reduced before the backward passes and the engine scales each
micro-batch's summed cross-entropy by it (parallel/engine.py), so the result does not depend
on how tokens are split across ranks or micro-batches.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from parallel.distributed import all_reduce
from train.build import Run
from train.nonfinite import NonFiniteGuard
from train.optim import lr_at


@dataclass
class StepOutput:
    loss: float                 # mean loss over the global step's label tokens
    lr: float
    grad_norm: float            # before clipping
    seconds: float
    tokens: int                 # tokens this rank loaded (before the sequence-parallel slice)
    seq_len: int                # row length of this step (curricula vary it)
    rows: int
    stop_now: bool              # some rank asked to stop (signal or time limit): save and exit
    nonfinite_skipped: int = 0  # steps dropped so far for a non-finite loss/grad norm (train.on_nonfinite=skip)


def label_count(run: Run, batches) -> int:
    """Label tokens of the whole step, over every rank (each (dp, sp) coordinate counted once)."""
    counts = float(run.engine.is_loss_rank) * sum(b.num_label_tokens() for b in batches)
    return int(all_reduce(torch.tensor([counts], dtype=torch.float64)).item())


def train_step(run: Run, step: int, nonfinite: NonFiniteGuard | None = None) -> StepOutput:
    """Step `step` (0-based) -> its output; one all-reduce carries the loss and every rank's stop vote
    (one count per reason, so every rank records the same reason). With `nonfinite`, a NaN/inf loss
    or grad norm on any rank is caught before the update (train/nonfinite.py)."""
    t0 = time.perf_counter()
    cfg, engine, pstate = run.cfg, run.engine, run.pstate
    lr = lr_at(step, cfg.train.steps, cfg.optim)
    engine.set_lr(lr)
    full = [run.loader.next_batch() for _ in range(cfg.train.grad_accum)]
    batches = [b.seq_slice(pstate.sp_rank, pstate.dims.sp).to(run.device) for b in full]
    global_count = label_count(run, batches)
    loss_sum = engine.forward_backward(batches, global_count, run.length_gen)
    grad_norm = engine.clip(cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf"))
    if nonfinite is not None and nonfinite.skip_step(step + 1, loss_sum, grad_norm):
        engine.optimizer.zero_grad(set_to_none=True)     # the step is dropped: no update
    else:
        engine.step()
    stats = all_reduce(torch.cat([(loss_sum * float(engine.is_loss_rank)).reshape(1), run.stop.votes()]))
    dt = time.perf_counter() - t0
    run.stop.observe_step(dt)
    return StepOutput(loss=stats[0].item() / max(1, global_count), lr=lr, grad_norm=float(grad_norm), seconds=dt,
                      tokens=sum(b.tokens.numel() for b in full), seq_len=full[0].shape[1],
                      rows=full[0].shape[0], stop_now=run.stop.agree(stats[1:]),
                      nonfinite_skipped=nonfinite.skipped if nonfinite is not None else 0)
