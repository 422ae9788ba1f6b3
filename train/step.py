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


def forward_backward(model, batches: list[Batch], pstate, global_count: int, autocast) -> torch.Tensor:
    """Run forward+backward on every micro-batch; returns this rank's summed loss (float64, detached)."""
    loss_sum = torch.zeros((), dtype=torch.float64)
    scale = pstate.grad_group_size / max(1, global_count)
    for i, b in enumerate(batches):
        last = i == len(batches) - 1
        sync = model.no_sync() if (not last and hasattr(model, "no_sync")) else nullcontext()
        with sync:
            with autocast:
                logits = model(b.tokens, b.positions, b.doc_ids, sp=pstate.sp_hooks)
            ce = F.cross_entropy(logits.float().flatten(0, 1), b.labels.flatten(),
                                 ignore_index=IGNORE_INDEX, reduction="sum")
            (ce * scale).backward()
        loss_sum += ce.detach().double().cpu()
    return loss_sum
