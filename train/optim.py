"""AdamW with decoupled weight decay on matrices only, and the learning-rate schedules.

Schedules are pure functions of the step (nothing to save but the step itself):
- cosine: linear warmup to lr, cosine decay to lr·min_lr_ratio at the last step;
- wsd (warmup-stable-decay): warmup, constant lr, then a linear decay over the final
  decay_fraction of the steps to lr·min_lr_ratio;
- constant: warmup, then constant.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def lr_at(step: int, total_steps: int, cfg) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total_steps`."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return peak
    if cfg.schedule == "cosine":
        span = max(1, total_steps - cfg.warmup_steps - 1)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
    if cfg.schedule == "wsd":
        decay_steps = max(1, int(round(total_steps * cfg.decay_fraction)))
        decay_start = total_steps - decay_steps
        if step < decay_start:
            return peak
        progress = min(1.0, (step - decay_start + 1) / decay_steps)
        return peak + (floor - peak) * progress
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed matrices, and the rest (norm gains, biases, A_log, D, dt_bias)."""
    no_decay = model.no_weight_decay_names() if hasattr(model, "no_weight_decay_names") else set()
    decay, keep = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (keep if name in no_decay or p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg, device: torch.device) -> torch.optim.Optimizer:
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), **kwargs)
