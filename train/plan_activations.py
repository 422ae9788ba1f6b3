"""Activation bytes per token of one layer, by pattern symbol: what autograd keeps for backward.

Two kernel paths differ in what they save, so each symbol has two formulas:
- "fused" (the GPU path): flash-attn / our Triton attention keep q, k, v (un-expanded for GQA),
  the output and the fp32 log-sum-exp; the Triton SSD keeps its inputs and the fp32 state entering
  each chunk (d_inner·d_state / chunk per token); the Triton RG-LRU scan keeps a and h.
  These are read off each kernel's save_for_backward and the eager ops around it.
- "torch" (the CPU path): SDPA expands K/V to every query head; the chunked SSD and the RG-LRU
  scan in plain PyTorch keep their intermediates. The coefficients of `M` and `R` here are the
  least-squares fit of what StorageTracker (train/plan_measure.py) measured for one block over
  ten shapes (d_model 128-256, heads, state 16-128, chunk 32-128; residuals < 1 %).
Every layer also keeps its RMSNorm's normalised input and output and passes its output on
(`block_common`). Sizes are per rank: tensor parallelism splits heads and widths (the residual
stream is replicated), sequence parallelism splits tokens (the caller divides T).
A symbol without a formula here (a mixer added later) is estimated as an MLP-sized layer.
"""
from __future__ import annotations


def block_common(cfg, s: int) -> float:
    """Bytes per token every Block keeps: its output (the next block's input), the RMSNorm's
    normalised input and weighted output, and under bf16 the fp32 copy the norm computes in."""
    fp32_copy = 4 if s < 4 else 0
    return cfg.d_model * (3 * s + fp32_copy) + 4


def attention_bytes(cfg, s: int, tp: int, path: str) -> float:
    h, kv, hd = cfg.n_heads // tp, max(1, cfg.kv_heads // tp), cfg.attn_head_dim
    kv_kept = h if path == "torch" else kv                  # SDPA on CPU expands K/V to every head
    rope = hd * cfg.rope_fraction                           # cos and sin, half the rotary dim each
    return s * (2 * h * hd + 2 * kv_kept * hd + rope) + 4 * h


def mlp_bytes(cfg, s: int, tp: int, path: str) -> float:
    """gate pre-activation, activation, up projection and their product (the down projection's input)."""
    return s * 4 * cfg.mlp_hidden_size / tp


def mamba2_bytes(cfg, s: int, tp: int, path: str) -> float:
    di = cfg.ssm_expand * cfg.d_model / tp
    h = di / cfg.ssm_headdim
    gn = cfg.ssm_ngroups * cfg.d_state / (tp if cfg.ssm_ngroups % tp == 0 and cfg.ssm_ngroups > 1 else 1)
    chunk = cfg.ssm_chunk_size
    if path == "torch":
        return s * (14.5 * di + 2.3 * h + 12.7 * gn + 2.1 * h * chunk + 1.8 * di * cfg.d_state / chunk)
    # z, conv input and output [x|B|C], y, the gated norm's three tensors, out_proj's input;
    # dt before/after softplus (fp32); the fp32 state entering each chunk
    return s * (8 * di + 4 * gn) + 8 * h + 4 * di * cfg.d_state / chunk


def griffin_bytes(cfg, s: int, tp: int, path: str) -> float:
    w = (cfg.lru_width or cfg.d_model) / tp
    if path == "torch":
        return s * 33 * w
    # gate branch (pre/post gelu), conv input and output, gate*h and out's input in compute dtype;
    # r, i, a and the scan input b in fp32
    return s * 6 * w + 16 * w


LAYER_BYTES = {"*": attention_bytes, "W": attention_bytes, "-": mlp_bytes, "M": mamba2_bytes, "R": griffin_bytes}


def layer_bytes(symbol: str, cfg, s: int, tp: int, path: str) -> float:
    """Activation bytes per token of one Block with this symbol (its mixer plus `block_common`)."""
    mixer = LAYER_BYTES.get(symbol, mlp_bytes)
    return block_common(cfg, s) + mixer(cfg, s, tp, path)
