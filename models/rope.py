"""Rotary position embedding driven by per-token positions (Batch.positions), with the
context-extension scalings of the literature.

Positions restart at 0 in every packed document, so a document's encoding never depends on
what was packed before it. Rotation uses the split-half (GPT-NeoX / Llama) convention; with
model.rope_fraction < 1 only the first rotary_dim channels of a head rotate (partial RoPE).

model.rope_scaling picks how the inverse frequencies f_i = θ^(−2i/d), i < d/2, change
(s = model.rope_factor, L0 = model.rope_original_max_len, d = rotary_dim):
- none:      f_i
- linear:    f_i / s                                   (position interpolation, Chen et al. 2023)
- ntk:       θ' = θ·s^(d/(d−2))                         (NTK-aware base change, static)
- dynamic:   ntk with s' = s·L/L0 − (s − 1) when L > L0, else none; L = 1 + the largest
             position of the call (over all rows, as transformers does; under sequence
             parallelism the largest over all ranks, so every rank uses the same frequencies)
- yarn:      per-frequency blend of f_i and f_i/s by a ramp over the channels that rotate
             between beta_slow and beta_fast times in L0 (Peng et al. 2023); cos and sin
             are multiplied by the attention factor (0.1·ln s + 1 unless rope_yarn_attn_factor
             is set), so q·k scales by its square (YaRN's temperature)
- llama3:    wavelengths below L0/high_freq_factor kept, above L0/low_freq_factor divided by
             s, smooth interpolation in between (Llama 3.1)
- truncated: f_i if f_i ≥ b, ρ if a < f_i < b, 0 if f_i ≤ a (Giraffe, Pal et al. 2023)
A `rope_theta` change (Llama 2 Long: 10⁴ → 5·10⁵) needs no scaling: set model.rope_theta.
Everything here is a pure function of the config and the positions, so it works at
evaluation time on a trained model (training-free) and for training at a longer length.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCALINGS = ("none", "linear", "ntk", "dynamic", "yarn", "llama3", "truncated")


@dataclass(frozen=True)
class RopeSpec:
    """The RoPE settings of one attention layer (read from ModelConfig by rope_spec)."""
    theta: float = 10000.0
    scaling: str = "none"
    factor: float = 1.0
    original_max_len: int = 0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    yarn_attn_factor: float = 0.0
    yarn_truncate: bool = True
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    trunc_a: float = 0.0
    trunc_b: float = 0.0
    trunc_rho: float = 0.0


def rope_spec(cfg) -> RopeSpec:
    """The RopeSpec of a ModelConfig."""
    return RopeSpec(theta=cfg.rope_theta, scaling=cfg.rope_scaling, factor=cfg.rope_factor,
                    original_max_len=cfg.rope_original_max_len, beta_fast=cfg.rope_beta_fast,
                    beta_slow=cfg.rope_beta_slow, yarn_attn_factor=cfg.rope_yarn_attn_factor,
                    yarn_truncate=cfg.rope_yarn_truncate, low_freq_factor=cfg.rope_low_freq_factor,
                    high_freq_factor=cfg.rope_high_freq_factor, trunc_a=cfg.rope_trunc_a,
                    trunc_b=cfg.rope_trunc_b, trunc_rho=cfg.rope_trunc_rho)


def rotary_dim(head_dim: int, fraction: float) -> int:
    """Channels of a head that rotate: an even number, head_dim·fraction rounded down."""
    return int(head_dim * fraction) // 2 * 2


def plain_frequencies(theta: float, dim: int, dtype=torch.float64, device=None) -> torch.Tensor:
    return theta ** (-torch.arange(0, dim, 2, dtype=dtype, device=device) / dim)


def yarn_ramp(spec: RopeSpec, dim: int, dtype, device) -> torch.Tensor:
    """Weight of the extrapolated (unscaled) frequency per channel pair: 1 for the fast
    channels (more than beta_fast turns in L0), 0 for the slow ones, linear in between."""
    def channel(turns: float) -> float:
        return dim * math.log(spec.original_max_len / (turns * 2 * math.pi)) / (2 * math.log(spec.theta))

    low, high = channel(spec.beta_fast), channel(spec.beta_slow)
    if spec.yarn_truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=dtype, device=device) - low) / (high - low)).clamp(0, 1)
    return 1 - ramp


def llama3_frequencies(spec: RopeSpec, freq: torch.Tensor) -> torch.Tensor:
    s, lo, hi, L0 = spec.factor, spec.low_freq_factor, spec.high_freq_factor, spec.original_max_len
    wavelen = 2 * math.pi / freq
    smooth = (L0 / wavelen - lo) / (hi - lo)
    mid = (1 - smooth) * freq / s + smooth * freq
    return torch.where(wavelen < L0 / hi, freq, torch.where(wavelen > L0 / lo, freq / s, mid))


def inv_frequencies(spec: RopeSpec, dim: int, seq_len: int | None = None, dtype=torch.float64,
                    device=None) -> torch.Tensor:
    """Inverse frequencies [dim // 2] of the scaled RoPE; seq_len is used by `dynamic` only."""
    s = spec.factor
    if spec.scaling == "ntk":
        return plain_frequencies(spec.theta * s ** (dim / (dim - 2)), dim, dtype, device)
    if spec.scaling == "dynamic":
        length = max(int(seq_len or 0), spec.original_max_len)
        base = spec.theta * (s * length / spec.original_max_len - (s - 1)) ** (dim / (dim - 2))
        return plain_frequencies(base, dim, dtype, device)
    freq = plain_frequencies(spec.theta, dim, dtype, device)
    if spec.scaling == "linear":
        return freq / s
    if spec.scaling == "yarn":
        keep = yarn_ramp(spec, dim, dtype, device)
        return freq / s * (1 - keep) + freq * keep
    if spec.scaling == "llama3":
        return llama3_frequencies(spec, freq)
    if spec.scaling == "truncated":
        rho = torch.full_like(freq, spec.trunc_rho)
        return torch.where(freq >= spec.trunc_b, freq, torch.where(freq > spec.trunc_a, rho, torch.zeros_like(freq)))
    return freq


def attention_factor(spec: RopeSpec) -> float:
    """Multiplier of cos and sin (YaRN's temperature; 1 for every other scaling)."""
    if spec.scaling != "yarn":
        return 1.0
    if spec.yarn_attn_factor:
        return spec.yarn_attn_factor
    return 1.0 if spec.factor <= 1 else 0.1 * math.log(spec.factor) + 1.0


def rope_angles(positions: torch.Tensor, dim: int, spec: RopeSpec | float, dtype: torch.dtype,
                seq_len: int | None = None):
    """cos, sin of shape [B, T, 1, dim // 2] for int positions [B, T] (dim = rotary_dim).

    `spec` may be a plain θ (unscaled RoPE). Angles are computed in float64 for float64
    models and float32 otherwise; `seq_len` is the dynamic-NTK length (see module doc)."""
    if not isinstance(spec, RopeSpec):
        spec = RopeSpec(theta=float(spec))
    work = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = inv_frequencies(spec, dim, seq_len, torch.float64, positions.device).to(work)
    ang = positions.to(work).unsqueeze(-1) * inv_freq
    scale = attention_factor(spec)
    return (ang.cos() * scale).unsqueeze(2), (ang.sin() * scale).unsqueeze(2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first 2·cos.shape[-1] channels of x [B, T, H, D] by the angles from
    rope_angles; the remaining channels (partial RoPE) pass through unchanged."""
    rot = 2 * cos.shape[-1]
    half = rot // 2
    x1, x2 = x[..., :half].to(cos.dtype), x[..., half:rot].to(cos.dtype)
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
    return out if rot == x.shape[-1] else torch.cat([out, x[..., rot:]], dim=-1)


def validate_rope(cfg) -> None:
    """Raise ValueError (one line, with the fix) for inconsistent RoPE settings."""
    kind = cfg.rope_scaling
    if kind not in SCALINGS:
        raise ValueError(f"model.rope_scaling={kind!r} must be one of {', '.join(SCALINGS)}")
    if cfg.rope_theta <= 0:
        raise ValueError("model.rope_theta must be positive")
    if not 0 < cfg.rope_fraction <= 1:
        raise ValueError("model.rope_fraction (rotated share of a head) must be in (0, 1]")
    if kind in ("linear", "ntk", "dynamic", "yarn", "llama3") and cfg.rope_factor < 1:
        raise ValueError(f"model.rope_factor={cfg.rope_factor} must be >= 1 for rope_scaling={kind!r}")
    if kind in ("dynamic", "yarn", "llama3") and cfg.rope_original_max_len <= 0:
        raise ValueError(f"rope_scaling={kind!r} needs model.rope_original_max_len (the pretrained context, "
                         "e.g. 8192)")
    if kind == "llama3" and not 0 < cfg.rope_low_freq_factor < cfg.rope_high_freq_factor:
        raise ValueError("rope_scaling='llama3' needs 0 < model.rope_low_freq_factor < model.rope_high_freq_factor")
    if kind == "yarn" and not 0 < cfg.rope_beta_slow < cfg.rope_beta_fast:
        raise ValueError("rope_scaling='yarn' needs 0 < model.rope_beta_slow < model.rope_beta_fast")
    if kind == "truncated" and not 0 <= cfg.rope_trunc_rho <= cfg.rope_trunc_a < cfg.rope_trunc_b:
        raise ValueError("rope_scaling='truncated' needs 0 <= model.rope_trunc_rho <= model.rope_trunc_a < "
                         "model.rope_trunc_b (frequencies in radians per token)")
