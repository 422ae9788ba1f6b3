"""Training FLOPs per token, for MFU.

Convention (PaLM / Megatron): a matmul of an [n, k] input by a [k, m] weight costs 2·n·k·m
FLOPs forward and twice that backward, so training costs 3x forward. Per token:
- every linear layer: 6 · (its parameter count), the LM head included, the embedding lookup not;
- attention scores and weighted sum: 3 · 2 · 2 · H · D_head · C, where C is the mean number of
  keys a query sees: (T + 1)/2 for causal attention over T tokens, and for a window w
  (w ≤ T) (w·(w+1)/2 + (T − w)·w) / T. Counting only visible keys is what fused kernels
  actually compute (FlashAttention's convention for causal).
Each MixerSpec's `flops` (forward, per token, excluding the linear layers) adds the mixer's
own non-matmul work: attention its scores (above); `M` (models/mamba2.py) the depthwise conv
and the chunked SSD (C·Bᵀ and scores·x over chunks of L tokens, chunk states, state→output);
`R` (models/griffin.py) the conv, the block-diagonal gates and the recurrence. Both are
linear in T, so their per-token cost is flat; `*` grows with T, `W` saturates at the window.
MLP (`-`) is linear layers only. `layer_flops` is also the pipeline cut's cost per layer.
"""
from __future__ import annotations

from torch import nn


def mean_visible_keys(seq_len: int, window: int | None) -> float:
    t = seq_len
    if window is None or window >= t:
        return (t + 1) / 2
    w = window
    return (w * (w + 1) / 2 + (t - w) * w) / t


def linear_params(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def layer_flops(block: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token of one Block at sequence length seq_len."""
    from models.mixer_spec import mixer_spec

    mixer = block.mixer
    fwd = 2.0 * linear_params(mixer)
    extra = mixer_spec(block.symbol).flops
    if extra is not None:
        fwd += float(extra(mixer, seq_len))
    return 3.0 * fwd


def head_flops(cfg) -> float:
    """Training FLOPs per token of the LM head (tied or not): 6 · d_model · vocab."""
    return 6.0 * cfg.d_model * cfg.vocab_size


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training (forward + backward) FLOPs per token of a LanguageModel at sequence length seq_len."""
    return head_flops(model.cfg) + sum(layer_flops(block, seq_len) for block in model.layers)
