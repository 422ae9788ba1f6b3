"""Spec of the attention mixers: `*` global and `W` sliding-window (models/attention.py)."""
from __future__ import annotations

from dataclasses import fields

from models.attention import Attention
from models.config import ModelConfig
from models.mixer_spec import MixerSpec, divisible, register

FIELDS = ("n_heads", "n_kv_heads", "head_dim", *(f.name for f in fields(ModelConfig) if f.name.startswith("rope_")))


def attention_flops(mixer: Attention, seq_len: int) -> float:
    """Scores and weighted sum over the visible keys: 2 · 2 · H · D_head · C (models/flops.py)."""
    from models.flops import mean_visible_keys

    heads = mixer.wq.out_features // mixer.head_dim
    return 4.0 * heads * mixer.head_dim * mean_visible_keys(seq_len, mixer.window)


def attention_tp_check(cfg, tp: int) -> str | None:
    problem = divisible(cfg.n_heads, "the number of attention heads", "model.n_heads", tp)
    kv = cfg.kv_heads
    if problem is None and kv % tp and tp % kv:
        problem = (f"model.n_kv_heads={kv} must divide or be divisible by parallel.tp={tp} "
                   "(kv heads are split, or replicated when fewer than tp)")
    return problem


COMMON = dict(module_class=Attention, flops=attention_flops, tp_plan="parallel.tensor.plan:shard_attention",
              tp_check=attention_tp_check, sp_hooks=("attention",))

register(MixerSpec("*", "global attention", build=lambda cfg, i: Attention(cfg, i, window=None),
                   config_fields=FIELDS, **COMMON))
register(MixerSpec("W", "sliding-window attention", build=lambda cfg, i: Attention(cfg, i, window=cfg.window),
                   config_fields=(*FIELDS, "window"), **COMMON))
