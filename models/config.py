"""ModelConfig: every architectural knob of a longweave language model.

One flat dataclass serves every stack; the layer pattern decides which fields matter
(attention fields for `*`/`W`, Mamba-2 fields for `M`, Griffin fields for `R`).
"""
from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field


def opt(default=MISSING, help: str = "", *, factory=MISSING, choices: tuple = ()):
    """A config field with its one-line meaning (`help`), shown by `python -m train --help`.

    `factory` makes a mutable default (lists); `choices` lists every allowed value.
    """
    metadata = {"help": help, **({"choices": tuple(choices)} if choices else {})}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ModelConfig:
    pattern: str = opt("(*-)x4", "one symbol per sublayer: * W M R -, repeats '(...)xN'")
    vocab_size: int = opt(260, "vocabulary size (must cover the tokenizer's ids)")
    d_model: int = opt(128, "residual stream width")
    # attention (* and W)
    n_heads: int = opt(4, "attention query heads")
    n_kv_heads: int = opt(0, "key/value heads: 0 = n_heads (MHA), 1 = MQA, otherwise GQA")
    head_dim: int = opt(0, "attention head dimension (0 = d_model // n_heads)")
    rope_theta: float = opt(10000.0, "RoPE base frequency")
    # RoPE scaling for context extension (models/rope.py; maps to/from a Hugging Face rope_scaling dict)
    rope_scaling: str = opt("none", "none | linear | ntk | dynamic | yarn | llama3 | truncated")
    rope_factor: float = opt(1.0, "RoPE scaling: s, the context-extension factor")
    rope_original_max_len: int = opt(0, "L0: the pretrained context (dynamic, yarn, llama3)")
    rope_beta_fast: float = opt(32.0, "yarn: channels turning more than this often in L0 keep f_i")
    rope_beta_slow: float = opt(1.0, "yarn: channels turning less than this often use f_i / s")
    rope_yarn_attn_factor: float = opt(0.0, "yarn: cos/sin multiplier (0 = 0.1·ln(s) + 1)")
    rope_yarn_truncate: bool = opt(True, "yarn: round the ramp's ends to whole channels (transformers' default)")
    rope_low_freq_factor: float = opt(1.0, "llama3: wavelengths above L0 / this are divided by s")
    rope_high_freq_factor: float = opt(4.0, "llama3: wavelengths below L0 / this are kept")
    rope_trunc_a: float = opt(0.0, "truncated: frequencies <= a become 0")
    rope_trunc_b: float = opt(0.0, "truncated: frequencies in (a, b) become rho; >= b are kept")
    rope_trunc_rho: float = opt(0.0, "truncated: the value rho that frequencies in (a, b) become")
    rope_fraction: float = opt(1.0, "share of each head's channels that rotate (partial RoPE)")
    max_position_embeddings: int = opt(0, "the context the model is meant for (Hugging Face configs; 0 = unset)")
    window: int = opt(256, "sliding window (tokens) for W layers")
    attn_qkv_bias: bool = opt(False, "biases on the q/k/v projections (Qwen2, Llama attention_bias)")
    attn_out_bias: bool = opt(False, "bias on the attention output projection")
    # MLP (-)
    mlp_type: str = opt("swiglu", "MLP gating: swiglu | geglu")
    mlp_hidden: int = opt(0, "MLP hidden width (0 = 8/3 * d_model rounded up to a multiple of 64)")
    mlp_bias: bool = opt(False, "biases on the MLP's three linears")
    # Mamba-2 (M)
    d_state: int = opt(64, "Mamba-2 state size per head")
    ssm_headdim: int = opt(32, "Mamba-2 head dimension")
    ssm_ngroups: int = opt(1, "Mamba-2 B/C groups")
    ssm_expand: int = opt(2, "Mamba-2 inner width = ssm_expand * d_model")
    ssm_chunk_size: int = opt(64, "Mamba-2 chunk length of the chunked scan")
    conv_width: int = opt(4, "width of the causal depthwise convolution in M and R blocks")
    dt_min: float = opt(0.001, "Mamba-2 smallest initial time step")
    dt_max: float = opt(0.1, "Mamba-2 largest initial time step")
    dt_limit_min: float = opt(0.0, "Mamba-2 clamps softplus(dt + dt_bias) to at least this (time_step_limit)")
    dt_limit_max: float = opt(math.inf, "Mamba-2 clamps softplus(dt + dt_bias) to at most this (time_step_limit)")
    # Griffin (R)
    lru_width: int = opt(0, "Griffin RG-LRU width (0 = d_model)")
    lru_heads: int = opt(0, "Griffin blocks of the block-diagonal gates (0 = n_heads)")
    lru_c: float = opt(8.0, "RG-LRU gate constant c (a = sigmoid(Lambda)^(c*r))")
    lru_bias: bool = opt(False, "biases on the Griffin block's linear_x, linear_y and linear_out (RecurrentGemma)")
    lru_scale_first: bool = opt(True, "RG-LRU scales a document's first input by sqrt(1-a^2) too "
                                "(false: position 0 enters unscaled, as RecurrentGemma)")
    # state-collapse mitigations for M and R (models/collapse.py); the defaults switch them off
    collapse_decay_scale: float = opt(1.0, "λ ≥ 1 forgets more: a → a^λ (Δ·A → λ·Δ·A)")
    collapse_write_scale: float = opt(1.0, "γ ≤ 1 shrinks the written term u → γ·u")
    collapse_state_norm: float = opt(0.0, "per-head state-norm bound (0 = off)")
    collapse_norm_chunk: int = opt(64, "parallel path renormalises the carried state every this many tokens")
    collapse_window: int = opt(0, "state-difference sliding window in tokens (0 = off)")
    # common
    norm_eps: float = opt(1e-6, "RMSNorm epsilon")
    norm_unit_offset: bool = opt(False, "RMSNorm weights stored as w and applied as 1 + w (Gemma)")
    embed_scale: float = opt(1.0, "embeddings are multiplied by this (RecurrentGemma: sqrt(d_model) in bfloat16)")
    logit_soft_cap: float = opt(0.0, "logits become tanh(logits / c) * c (Gemma; 0 = off)")
    tie_embeddings: bool = opt(True, "share the input embedding with the output head")
    init_std: float = opt(0.02, "standard deviation of the weight initialisation")

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
        if not self.embed_scale > 0 or self.logit_soft_cap < 0:
            raise ValueError("model.embed_scale must be > 0 and model.logit_soft_cap >= 0 (0 = off)")
        if self.window <= 0:
            raise ValueError("model.window must be a positive number of tokens")
        from models.collapse import settings_from, validate

        validate(settings_from(self))
        from models.mixer_spec import specs_in

        for spec in specs_in(parse_pattern(self.pattern)):     # each mixer checks the fields it reads
            if spec.validate is not None:
                spec.validate(self)
