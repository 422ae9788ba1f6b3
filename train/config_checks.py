"""Range checks on a loaded Config: a value that would train nonsense, crash later with a
traceback, or silently do nothing is a ConfigError here (one line naming the key and the
fix; the CLI exits 2). load_config calls `check_ranges` after every override is applied.
Whether train.device=cuda has a GPU is checked where the trainer starts, not here: the
launcher loads the same config on a login node without GPUs."""
from __future__ import annotations

import math

POSITIVE_INT = ("data.seq_len", "data.batch_size", "train.steps", "train.grad_accum", "train.log_every",
                "parallel.tp", "parallel.pp", "parallel.sp", "parallel.pp_microbatches", "train.max_nonfinite")
NON_NEGATIVE = ("optim.warmup_steps", "checkpoint.every", "checkpoint.keep_last", "eval.every", "data.num_workers",
                "train.time_limit", "train.threads", "optim.weight_decay", "optim.grad_clip", "optim.min_lr_ratio",
                "train.loss_chunk")


def _get(cfg, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section, None), name, None)    # None: a key renamed since (skipped)


def check_ranges(cfg) -> None:
    from train.config import ConfigError

    def fail(msg: str) -> None:
        raise ConfigError(msg)

    for key in POSITIVE_INT:
        v = _get(cfg, key)
        if v is not None and not v > 0:
            fail(f"config key '{key}' must be > 0; got {v!r}")
    for key in NON_NEGATIVE:
        v = _get(cfg, key)
        if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            fail(f"config key '{key}' must be a finite number >= 0; got {v!r}")
    lr = cfg.optim.lr
    if not (math.isfinite(lr) and lr > 0):
        fail(f"config key 'optim.lr' must be a finite number > 0; got {lr!r}")
    for key in ("optim.beta1", "optim.beta2"):
        v = _get(cfg, key)
        if not 0 <= v < 1:
            fail(f"config key '{key}' must be in [0, 1); got {v!r}")
    if not (math.isfinite(cfg.optim.eps) and cfg.optim.eps > 0):
        fail(f"config key 'optim.eps' must be a finite number > 0; got {cfg.optim.eps!r}")
    if cfg.parallel.dp == 0 or cfg.parallel.dp < -1:
        fail(f"config key 'parallel.dp' must be -1 (fill the world) or > 0; got {cfg.parallel.dp}")
    _check_model_window(cfg, fail)
    _check_allow_model_change(cfg, fail)


def _check_model_window(cfg, fail) -> None:
    from models.pattern import parse_pattern

    if "W" in set(parse_pattern(cfg.model.pattern)) and cfg.model.window > cfg.data.seq_len:
        fail(f"model.window={cfg.model.window} is longer than data.seq_len={cfg.data.seq_len}, so the W layers "
             "would attend globally; set model.window <= data.seq_len or use '*' layers")


def _check_allow_model_change(cfg, fail) -> None:
    import dataclasses

    names = {f.name for f in dataclasses.fields(cfg.model)}
    for key in cfg.checkpoint.allow_model_change:
        if key.removeprefix("model.") not in names:
            fail(f"checkpoint.allow_model_change names {key!r}, which is not a model key")
    cfg.checkpoint.allow_model_change = [k.removeprefix("model.") for k in cfg.checkpoint.allow_model_change]
