"""Spec of the Mamba-2 mixer `M` (models/mamba2.py)."""
from __future__ import annotations

from models.mamba2 import Mamba2
from models.mixer_spec import MixerSpec, divisible, register


def validate_mamba2(cfg) -> None:
    d_inner = cfg.ssm_expand * cfg.d_model
    if d_inner % cfg.ssm_headdim:
        raise ValueError(f"Mamba-2 width ssm_expand*d_model={d_inner} is not divisible by "
                         f"model.ssm_headdim={cfg.ssm_headdim}; change one of them")
    if (d_inner // cfg.ssm_headdim) % cfg.ssm_ngroups:
        raise ValueError(f"Mamba-2 heads {d_inner // cfg.ssm_headdim} are not a multiple of "
                         f"model.ssm_ngroups={cfg.ssm_ngroups}; change model.ssm_ngroups")
    if not 0 < cfg.dt_min <= cfg.dt_max:
        raise ValueError("model.dt_min and model.dt_max must satisfy 0 < dt_min <= dt_max")
    if not 0 <= cfg.dt_limit_min < cfg.dt_limit_max:
        raise ValueError("model.dt_limit_min and model.dt_limit_max must satisfy 0 <= min < max")
    if cfg.conv_width < 1:
        raise ValueError("model.conv_width must be >= 1")


def mamba2_tp_check(cfg, tp: int) -> str | None:
    heads = cfg.ssm_expand * cfg.d_model // cfg.ssm_headdim
    problem = divisible(heads, "the number of Mamba-2 heads", "model.ssm_headdim", tp)
    g = cfg.ssm_ngroups
    if problem is None and g % tp and g != 1:
        problem = (f"model.ssm_ngroups={g} must be 1 or divisible by parallel.tp={tp} "
                   "(groups are split over tp ranks, or one group is replicated)")
    return problem


register(MixerSpec(
    "M", "Mamba-2 mixer", module_class=Mamba2, build=Mamba2, validate=validate_mamba2,
    config_fields=("d_state", "ssm_headdim", "ssm_ngroups", "ssm_expand", "ssm_chunk_size", "conv_width",
                   "dt_min", "dt_max", "dt_limit_min", "dt_limit_max", "collapse_decay_scale", "collapse_write_scale", "collapse_state_norm",
                   "collapse_norm_chunk", "collapse_window"),
    flops=lambda m, seq_len: m.flops_per_token(seq_len),
    tp_plan="parallel.tensor.recurrent:shard_mamba2", tp_check=mamba2_tp_check,
    sp_hooks=("causal_conv1d", "ssd"), no_decay=("A_log", "D", "dt_bias"),
    state_heads=lambda m: m.nheads,
))
