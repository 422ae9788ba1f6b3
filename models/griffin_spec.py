"""Spec of the Griffin recurrent block `R` (models/griffin.py: conv + RG-LRU)."""
from __future__ import annotations

from models.griffin import GriffinRecurrent
from models.mixer_spec import MixerSpec, divisible, register


def validate_griffin(cfg) -> None:
    if cfg.conv_width < 1:
        raise ValueError("model.conv_width must be >= 1")
    width, heads = cfg.lru_width or cfg.d_model, cfg.lru_heads or cfg.n_heads
    if width % heads:
        raise ValueError(f"Griffin width {width} is not divisible by lru_heads={heads}; "
                         "set model.lru_width or model.lru_heads")


def griffin_tp_check(cfg, tp: int) -> str | None:
    return (divisible(cfg.lru_width or cfg.d_model, "the Griffin recurrent width", "model.lru_width", tp)
            or divisible(cfg.lru_heads or cfg.n_heads, "the Griffin gate blocks", "model.lru_heads", tp))


register(MixerSpec(
    "R", "Griffin recurrent block", module_class=GriffinRecurrent, build=GriffinRecurrent,
    validate=validate_griffin,
    config_fields=("lru_width", "lru_heads", "lru_c", "lru_bias", "lru_scale_first", "conv_width",
                   "collapse_decay_scale", "collapse_write_scale", "collapse_state_norm", "collapse_norm_chunk", "collapse_window"),
    flops=lambda m, seq_len: m.flops_per_token(seq_len),
    tp_plan="parallel.tensor.recurrent:shard_griffin", tp_check=griffin_tp_check,
    sp_hooks=("causal_conv1d", "linear_scan"), state_heads=lambda m: m.rglru.gate_a.blocks,
))
