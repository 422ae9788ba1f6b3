"""ModelConfig: every architectural knob of a longweave language model.

One flat dataclass serves every stack; the layer pattern decides which fields matter
(attention fields for `*`/`W`, Mamba-2 fields for `M`, Griffin fields for `R`).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelConfig:
    pattern: str = "(*-)x4"          # one symbol per sublayer: * W M R -, repeats "(...)xN"
    vocab_size: int = 260
    d_model: int = 128
    # attention (* and W)
    n_heads: int = 4
    n_kv_heads: int = 0              # 0 = same as n_heads (MHA); 1 = MQA; otherwise GQA
    head_dim: int = 0                # 0 = d_model // n_heads
    rope_theta: float = 10000.0
    window: int = 256                # sliding window (tokens) for W layers
    # MLP (-)
    mlp_type: str = "swiglu"         # swiglu | geglu
    mlp_hidden: int = 0              # 0 = round(8/3 * d_model) up to a multiple of 64
    # Mamba-2 (M)
    d_state: int = 64
    ssm_headdim: int = 32
    ssm_ngroups: int = 1
    ssm_expand: int = 2
    ssm_chunk_size: int = 64
    conv_width: int = 4
    dt_min: float = 0.001
    dt_max: float = 0.1
    # Griffin (R)
    lru_width: int = 0               # 0 = d_model
    lru_heads: int = 0               # blocks of the block-diagonal gates; 0 = n_heads
    lru_c: float = 8.0
    # state-collapse mitigations for M and R (models/collapse.py); the defaults switch them off
    collapse_decay_scale: float = 1.0   # λ ≥ 1 forgets more: a → a^λ (Δ·A → λ·Δ·A)
    collapse_write_scale: float = 1.0   # γ ≤ 1 shrinks the written term u → γ·u
    collapse_state_norm: float = 0.0    # per-head state-norm bound (0 = off)
    collapse_norm_chunk: int = 64       # parallel path renormalises the carried state every this many tokens
    collapse_window: int = 0            # state-difference sliding window in tokens (0 = off)
    # common
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    init_std: float = 0.02

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def attn_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def mlp_hidden_size(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        h = int(8 * self.d_model / 3)
        return (h + 63) // 64 * 64

    def validate(self) -> None:
        """Raise ValueError (one line, with the fix) for inconsistent settings."""
        from models.pattern import parse_pattern

        parse_pattern(self.pattern)
        if self.d_model <= 0 or self.vocab_size <= 0:
            raise ValueError("model.d_model and model.vocab_size must be positive")
        if self.head_dim == 0 and self.d_model % self.n_heads:
            raise ValueError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}; "
                "change one of them or set model.head_dim"
            )
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"model.n_heads={self.n_heads} is not a multiple of model.n_kv_heads={self.kv_heads}"
            )
        if self.attn_head_dim % 2:
            raise ValueError(f"attention head dim {self.attn_head_dim} must be even for RoPE")
        if self.mlp_type not in ("swiglu", "geglu"):
            raise ValueError(f"model.mlp_type={self.mlp_type!r} must be 'swiglu' or 'geglu'")
        if self.window <= 0:
            raise ValueError("model.window must be a positive number of tokens")
        from models.collapse import settings_from, validate

        validate(settings_from(self))
        from models.mixer_spec import specs_in

        for spec in specs_in(parse_pattern(self.pattern)):     # each mixer checks the fields it reads
            if spec.validate is not None:
                spec.validate(self)
