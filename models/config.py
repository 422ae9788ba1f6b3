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
    # RoPE scaling for context extension (models/rope.py; maps to/from a Hugging Face rope_scaling dict)
    rope_scaling: str = "none"       # none | linear | ntk | dynamic | yarn | llama3 | truncated
    rope_factor: float = 1.0         # s: the context-extension factor
    rope_original_max_len: int = 0   # L0: the pretrained context (dynamic, yarn, llama3)
    rope_beta_fast: float = 32.0     # yarn: channels turning more than this often in L0 keep f_i
    rope_beta_slow: float = 1.0      # yarn: channels turning less than this often use f_i / s
    rope_yarn_attn_factor: float = 0.0   # yarn: cos/sin multiplier (0 = 0.1·ln(s) + 1)
    rope_yarn_truncate: bool = True  # yarn: round the ramp's ends to whole channels (transformers' default)
    rope_low_freq_factor: float = 1.0    # llama3: wavelengths above L0 / this are divided by s
    rope_high_freq_factor: float = 4.0   # llama3: wavelengths below L0 / this are kept
    rope_trunc_a: float = 0.0        # truncated: frequencies <= a become 0
    rope_trunc_b: float = 0.0        # truncated: frequencies in (a, b) become rho; >= b are kept
    rope_trunc_rho: float = 0.0
    rope_fraction: float = 1.0       # share of each head's channels that rotate (partial RoPE)
    max_position_embeddings: int = 0     # the context the model is meant for (Hugging Face configs; 0 = unset)
    window: int = 256                # sliding window (tokens) for W layers
    attn_qkv_bias: bool = False      # biases on the q/k/v projections (Qwen2, Llama attention_bias)
    attn_out_bias: bool = False      # bias on the attention output projection
    # MLP (-)
    mlp_type: str = "swiglu"         # swiglu | geglu
    mlp_hidden: int = 0              # 0 = round(8/3 * d_model) up to a multiple of 64
    mlp_bias: bool = False           # biases on the MLP's three linears
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
        from models.rope import validate_rope

        validate_rope(self)
        if self.mlp_type not in ("swiglu", "geglu"):
            raise ValueError(f"model.mlp_type={self.mlp_type!r} must be 'swiglu' or 'geglu'")
        if self.window <= 0:
            raise ValueError("model.window must be a positive number of tokens")
        from models.collapse import settings_from, validate

        validate(settings_from(self))
        symbols = set(parse_pattern(self.pattern))
        if "M" in symbols:
            d_inner = self.ssm_expand * self.d_model
            if d_inner % self.ssm_headdim:
                raise ValueError(f"Mamba-2 width ssm_expand*d_model={d_inner} is not divisible by "
                                 f"model.ssm_headdim={self.ssm_headdim}; change one of them")
            if (d_inner // self.ssm_headdim) % self.ssm_ngroups:
                raise ValueError(f"Mamba-2 heads {d_inner // self.ssm_headdim} are not a multiple of "
                                 f"model.ssm_ngroups={self.ssm_ngroups}; change model.ssm_ngroups")
            if not 0 < self.dt_min <= self.dt_max:
                raise ValueError("model.dt_min and model.dt_max must satisfy 0 < dt_min <= dt_max")
        if ("M" in symbols or "R" in symbols) and self.conv_width < 1:
            raise ValueError("model.conv_width must be >= 1")
        if "R" in symbols:
            width, heads = self.lru_width or self.d_model, self.lru_heads or self.n_heads
            if width % heads:
                raise ValueError(f"Griffin width {width} is not divisible by lru_heads={heads}; "
                                 "set model.lru_width or model.lru_heads")
