"""One optimizer step's forward and backward passes over its micro-batches.

Each micro-batch's summed cross-entropy is scaled by grad_group_size / global_label_count:
gradient averaging over the dp × sp group then yields the gradient of the mean loss over
every label token of the global step, however tokens are split over ranks and micro-batches.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from data.batch import IGNORE_INDEX, Batch
from parallel.deepspeed_engine import is_deepspeed


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor, pstate) -> torch.Tensor:
    """Summed cross-entropy; vocab-parallel when the logits are a tensor-parallel vocab shard."""
    if getattr(pstate, "tp_group", None) is not None:
        from parallel.tensor import vocab_parallel_cross_entropy

        return vocab_parallel_cross_entropy(logits, labels, pstate.tp_group)
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def forward_backward(model, batches: list[Batch], pstate, global_count: int, autocast) -> torch.Tensor:
    """Run forward+backward on every micro-batch; returns this rank's summed loss (float64, detached)."""
    scale = pstate.grad_group_size / max(1, global_count)
    if getattr(pstate, "pipeline", None) is not None:
        with autocast:
            loss_sum = pstate.pipeline.forward_backward(batches, scale)
    else:
        loss_sum = _micro_batches(model, batches, pstate, scale, autocast)
    if getattr(pstate, "grad_sync", None) is not None:
        pstate.grad_sync()
    return loss_sum


def _micro_batches(model, batches: list[Batch], pstate, scale: float, autocast) -> torch.Tensor:
    loss_sum = torch.zeros((), dtype=torch.float64)
    backward = model.backward if is_deepspeed(model) else None   # DeepSpeed's engine owns the backward
    for i, b in enumerate(batches):
        last = i == len(batches) - 1
        sync = model.no_sync() if (not last and hasattr(model, "no_sync")) else nullcontext()
        with sync:
            length_gen = getattr(pstate, "length_gen", None)   # [lengthgen] state init (train/length_gen.py)
            with autocast:
                if length_gen is None:
                    logits = model(b.tokens, b.positions, b.doc_ids, sp=pstate.sp_hooks)
                else:
                    out = model(b.tokens, b.positions, b.doc_ids, sp=pstate.sp_hooks, **length_gen.forward_kwargs(b))
                    logits = length_gen.after_forward(out, b)
            ce = token_loss_sum(logits, b.labels, pstate)
            if backward is not None:
                backward(ce * scale)
                model.step()                             # a no-op except at the accumulation boundary
            else:
                (ce * scale).backward()
        loss_sum += ce.detach().double().cpu()
    return loss_sum
